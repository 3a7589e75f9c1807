//! Reading constants out of a function's embedded Python source, for the
//! tests that the Rust and Python sides of a format agree.
//!
//! Only what the functions use for their constants is understood: a
//! top-level `NAME = EXPR` line whose EXPR is an integer, a float, a bytes
//! literal, or a product of integers and earlier such names
//! (`16 * 1024 * 1024`, `16 * MIB`). Anything else fails the test loudly
//! rather than being guessed at.

/// The right-hand side of the top-level assignment to `name`.
fn assignment<'a>(source: &'a str, name: &str) -> &'a str {
    let mut found = source.lines().filter_map(|line| {
        let rest = line.strip_prefix(name)?;
        let rest = rest.trim_start().strip_prefix('=')?;
        // `NAME == …` is a comparison, not an assignment.
        (!rest.starts_with('=')).then(|| rest.split(" #").next().unwrap_or(rest).trim())
    });
    let Some(value) = found.next() else {
        panic!("the source assigns no {name}");
    };
    assert!(found.next().is_none(), "the source assigns {name} twice");
    value
}

/// An integer constant: a literal or a product of literals and names.
pub(crate) fn int(source: &str, name: &str) -> u64 {
    assignment(source, name)
        .split('*')
        .map(|factor| {
            let factor = factor.trim().replace('_', "");
            if factor.chars().all(|c| c.is_ascii_digit()) {
                factor
                    .parse::<u64>()
                    .unwrap_or_else(|e| panic!("{name}: {factor}: {e}"))
            } else {
                int(source, &factor)
            }
        })
        .product()
}

/// A float (or integer) constant.
pub(crate) fn float(source: &str, name: &str) -> f64 {
    let value = assignment(source, name);
    value
        .parse()
        .unwrap_or_else(|e| panic!("{name} = {value}: {e}"))
}

/// A bytes literal of printable ASCII without escapes, e.g. `b"BNTOBRW1"`.
pub(crate) fn bytes(source: &str, name: &str) -> Vec<u8> {
    let value = assignment(source, name);
    let inner = value
        .strip_prefix("b\"")
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or_else(|| panic!("{name} = {value} is not a plain bytes literal"));
    assert!(!inner.contains('\\'), "{name}: escapes are not understood");
    inner.as_bytes().to_vec()
}

/// An integer value of a TOML manifest's `key` (in any table).
pub(crate) fn manifest_int(manifest: &str, key: &str) -> u64 {
    let mut found = manifest.lines().filter_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.split('#').next().unwrap_or(v).trim())
    });
    let value = found
        .next()
        .unwrap_or_else(|| panic!("the manifest has no {key}"));
    assert!(found.next().is_none(), "the manifest has {key} twice");
    value
        .replace('_', "")
        .parse()
        .unwrap_or_else(|e| panic!("{key} = {value}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_and_names_are_evaluated_and_other_lines_are_not_mistaken_for_assignments() {
        let source = "MIB = 1024 * 1024\nMAX = 16 * MIB  # the most\nif MAX == 3:\n    pass\nRATE = 2.5\nMAGIC = b\"AB12\"\n";
        assert_eq!(int(source, "MIB"), 1 << 20);
        assert_eq!(int(source, "MAX"), 16 << 20);
        assert_eq!(float(source, "RATE"), 2.5);
        assert_eq!(bytes(source, "MAGIC"), b"AB12");
        assert_eq!(
            manifest_int("[limits]\nwall_ms = 300_000 # five\n", "wall_ms"),
            300_000
        );
    }

    #[test]
    #[should_panic(expected = "assigns no NOPE")]
    fn a_missing_constant_fails_the_test() {
        int("A = 1\n", "NOPE");
    }
}
