"""Pure, I/O-free parsers for message content: trace fields and MIME structure."""
