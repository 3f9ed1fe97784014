//! mcp-audit (filled by its own issue).
