"""Tests of cast.server.api routes."""
