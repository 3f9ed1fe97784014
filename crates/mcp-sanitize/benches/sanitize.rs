//! placeholder until the sanitize bench is written
fn main() {}
