//! mcp-sanitize (filled by its own issue).
