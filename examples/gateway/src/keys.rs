//! API keys: generation and the key policy, from mcp-auth.

/// A fresh API key that meets the key policy.
pub fn generate_api_key() -> String {
    mcp_auth::generate_api_key()
}
