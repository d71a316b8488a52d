"""Test support: config writer, service runner, milter protocol client."""
