//! mcp-tls (filled by its own issue).
