// TEMPORARY SHIM (replaced by the real canonicaliser)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanonError {
    NotAbsolute,
}
impl CanonError {
    pub fn message(self) -> &'static str {
        "bad path"
    }
}
impl std::fmt::Display for CanonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}
impl std::error::Error for CanonError {}
pub fn canonicalize_into(path: &[u8], out: &mut String) -> Result<(), CanonError> {
    if path.first() != Some(&b'/') {
        return Err(CanonError::NotAbsolute);
    }
    out.push_str(std::str::from_utf8(path).map_err(|_| CanonError::NotAbsolute)?);
    Ok(())
}
pub fn canonicalize(path: &[u8]) -> Result<String, CanonError> {
    let mut s = String::new();
    canonicalize_into(path, &mut s)?;
    Ok(s)
}
