//! Parsing of memcached's replies (used by the proxy to read its backends).
