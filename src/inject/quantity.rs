//! Just enough of Kubernetes' resource quantity grammar to reject a value the API
//! server would reject (a patch it refuses would block the Pod) and to compare a
//! request with its limit.

/// The value of a quantity such as `100m`, `64Mi`, `1.5`, `2e3`; `None` if invalid.
pub fn parse(quantity: &str) -> Option<f64> {
    let split = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let digits = number.strip_prefix(['+', '-']).unwrap_or(number);
    if digits.is_empty()
        || digits == "."
        || digits.matches('.').count() > 1
        || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0_f64.powi(2),
        "Gi" => 1024.0_f64.powi(3),
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        exponent => {
            let power = exponent.strip_prefix(['e', 'E'])?;
            let digits = power.strip_prefix(['+', '-']).unwrap_or(power);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            10f64.powi(power.parse::<i32>().ok()?)
        }
    };
    let result = value * multiplier;
    result.is_finite().then_some(result)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_the_kubernetes_forms() {
        assert_eq!(parse("100m"), Some(0.1));
        assert_eq!(parse("64Mi"), Some(64.0 * 1024.0 * 1024.0));
        assert_eq!(parse("1.5"), Some(1.5));
        assert_eq!(parse("2e3"), Some(2000.0));
        assert_eq!(parse("1k"), Some(1000.0));
    }

    #[test]
    fn rejects_what_the_api_server_rejects() {
        for bad in [
            "", "m", "abc", "1.2.3", "10 m", "10mi", "1e", "--1", "1Zi", ".",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
