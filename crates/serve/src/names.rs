//! The names a request may give: gallery (collection) names and identity names. Neither ever
//! becomes a file path (collections live in server-named folders), but both are checked so
//! that a path-like name (`../x`, `a/b`, `C:\x`) or a control character is refused with a
//! clear code, whatever a later version does with them.

/// The longest gallery name.
pub const MAX_GALLERY_NAME: usize = 64;
/// The longest identity name, in characters.
pub const MAX_IDENTITY_NAME: usize = 128;

/// Checks a gallery name: 1 to `MAX_GALLERY_NAME` (64) ASCII letters, digits, `-`, `_` and `.`,
/// starting with a letter or digit, with no `..`. The error says what is wrong.
pub fn check_gallery(name: &str) -> Result<(), String> {
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let chars_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !first_ok || !chars_ok || name.len() > MAX_GALLERY_NAME || name.contains("..") {
        return Err(format!(
            "gallery name `{}` is not allowed: use 1 to {MAX_GALLERY_NAME} ASCII letters, \
             digits, `-`, `_` and `.`, starting with a letter or digit, with no `..` (no paths)",
            shown(name)
        ));
    }
    Ok(())
}

/// Checks an identity name: 1 to `MAX_IDENTITY_NAME` (128) characters, letters and digits of any
/// script, spaces, `-`, `_`, `.`, `'` and `,`, starting with a letter or digit, with no `..`
/// (so `George_W_Bush`, `s12` and `José María` pass; `../x`, `a/b` and `a\b` do not).
pub fn check_identity(name: &str) -> Result<(), String> {
    let first_ok = name.chars().next().is_some_and(char::is_alphanumeric);
    let chars_ok = name
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.' | '\'' | ','));
    if !first_ok
        || !chars_ok
        || name.chars().count() > MAX_IDENTITY_NAME
        || name.contains("..")
        || name.ends_with(' ')
    {
        return Err(format!(
            "identity name `{}` is not allowed: use 1 to {MAX_IDENTITY_NAME} letters, digits, \
             spaces, `-`, `_`, `.`, `'` and `,`, starting with a letter or digit, with no `..` \
             (no paths)",
            shown(name)
        ));
    }
    Ok(())
}

/// A name as it is safe to echo in a message: control characters escaped, at most 80
/// characters.
fn shown(name: &str) -> String {
    let mut s: String = name
        .chars()
        .take(80)
        .flat_map(char::escape_default)
        .collect();
    if name.chars().count() > 80 {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_like_and_odd_names_are_refused() {
        for ok in ["default", "staff-2024", "a.b_c", "G1"] {
            assert!(check_gallery(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "a..b",
            "x y",
            "é",
            &"a".repeat(65),
        ] {
            assert!(check_gallery(bad).is_err(), "{bad}");
        }
        for ok in ["s1", "George_W_Bush", "José María", "O'Neil", "Smith, J."] {
            assert!(check_identity(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "../x", "..", "a/b", "a\\b", " x", "x ", "a\nb", "-x", "a..b", "C:x",
        ] {
            assert!(check_identity(bad).is_err(), "{bad}");
        }
        assert!(check_identity("../x").unwrap_err().contains("no paths"));
    }
}
