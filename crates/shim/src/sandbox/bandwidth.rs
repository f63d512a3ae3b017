//! A pod's rate limits from Kubernetes' bandwidth annotations (`kubernetes.io/ingress-bandwidth`,
//! `kubernetes.io/egress-bandwidth`, as CNI's bandwidth plugin reads them), in bits per second.
//! The pod's ingress is what its VM receives, its egress what the VM sends.

use std::collections::HashMap;

use network::RateLimit;

use crate::error::{Error, Result};

pub const INGRESS: &str = "kubernetes.io/ingress-bandwidth";
pub const EGRESS: &str = "kubernetes.io/egress-bandwidth";

/// kubelet's bounds on these annotations: 1 kbit/s to 1 Pbit/s.
const MIN_BPS: u64 = 1_000;
const MAX_BPS: u64 = 1_000_000_000_000_000;

/// The limits the annotations ask; a missing annotation limits nothing.
pub fn from_annotations(a: Option<&HashMap<String, String>>) -> Result<RateLimit> {
    let get = |k: &str| a.and_then(|a| a.get(k)).map(|v| parse(k, v)).transpose();
    Ok(RateLimit { rx_bps: get(INGRESS)?, tx_bps: get(EGRESS)? })
}

/// A Kubernetes quantity (`10M`, `1.5Gi`, `100000`) as bits per second, within kubelet's bounds.
fn parse(key: &str, v: &str) -> Result<u64> {
    let bad = |rule: &str| Error::Spec(format!("annotation {key}: {v:?} {rule}"));
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(v.len());
    let (num, suffix) = v.split_at(split);
    let mult: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => return Err(bad("is not a quantity: a number and one of k, M, G, T, P, Ki, Mi, Gi, Ti, Pi")),
    };
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if whole.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 9 || whole.len() > 20 {
        return Err(bad("is not a quantity: a number and one of k, M, G, T, P, Ki, Mi, Gi, Ti, Pi"));
    }
    let int = |s: &str| s.parse::<u128>().unwrap_or(0);
    let bps = int(whole) * mult + int(frac) * mult / 10u128.pow(frac.len() as u32);
    if bps < MIN_BPS as u128 {
        return Err(bad("is below 1k (kubelet's lower bound)"));
    }
    if bps > MAX_BPS as u128 {
        return Err(bad("is above 1P (kubelet's upper bound)"));
    }
    Ok(bps as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(pairs: &[(&str, &str)]) -> Result<RateLimit> {
        let a: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        from_annotations(Some(&a))
    }

    #[test]
    fn quantities_are_kubernetes_ones() {
        let r = of(&[(INGRESS, "10M"), (EGRESS, "1.5Mi")]).unwrap();
        assert_eq!(r, RateLimit { rx_bps: Some(10_000_000), tx_bps: Some(1_572_864) });
        assert_eq!(of(&[(EGRESS, "250000")]).unwrap(), RateLimit { rx_bps: None, tx_bps: Some(250_000) });
        assert_eq!(of(&[(INGRESS, " 1G ")]).unwrap().rx_bps, Some(1_000_000_000));
        assert!(of(&[]).unwrap().is_none());
        assert!(from_annotations(None).unwrap().is_none());
    }

    #[test]
    fn a_bad_quantity_names_the_annotation_and_the_rule() {
        for (v, rule) in [
            ("10 Mbit", "is not a quantity"),
            ("fast", "is not a quantity"),
            ("1.2.3M", "is not a quantity"),
            ("-5M", "is not a quantity"),
            ("999", "below 1k"),
            ("2P", "above 1P"),
        ] {
            let e = of(&[(INGRESS, v)]).unwrap_err().to_string();
            assert!(e.contains(INGRESS) && e.contains(rule), "{v}: {e}");
        }
    }
}
