"""Test helpers and data for the constraint engine tests."""
