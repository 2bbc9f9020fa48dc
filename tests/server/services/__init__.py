"""Tests of cast.server.services."""
