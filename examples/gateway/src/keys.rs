//! API keys: generation and the key policy (from mcp-auth).

/// A fresh API key that meets the key policy.
pub fn generate_api_key() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!@#%^*_+-=.";
    let mut rng = rand::rng();
    loop {
        let k: String = (0..32)
            .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
            .collect();
        if check_api_key(&k).is_ok() {
            return k;
        }
    }
}

/// Checks a key against the key policy; the error names the rule, never the key.
pub fn check_api_key(key: &str) -> Result<(), String> {
    if !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err("must contain only visible ASCII characters".into());
    }
    if key.len() < 16 {
        return Err("must be at least 16 characters long".into());
    }
    let classes = [
        key.bytes().any(|b| b.is_ascii_uppercase()),
        key.bytes().any(|b| b.is_ascii_lowercase()),
        key.bytes().any(|b| b.is_ascii_digit()),
        key.chars().any(|c| "!@#$%^&*()_+-=[]{}|;:,.<>?".contains(c)),
    ];
    if classes.iter().filter(|b| **b).count() < 3 {
        return Err("must contain at least 3 of: upper case letters, lower case letters, digits, special characters".into());
    }
    Ok(())
}
