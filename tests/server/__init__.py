"""Tests of the control plane (cast.server)."""
