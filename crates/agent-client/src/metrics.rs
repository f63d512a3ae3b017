//! The guest's network device counters in GetMetrics' Prometheus text, as kata's agent writes
//! them: `kata_guest_netdev_stat{interface="eth0",item="recv_bytes"} 762` (items from
//! `/proc/net/dev`: `recv_*` and `sent_*`).

use std::collections::BTreeMap;

use network::nl::LinkCounters;

/// The metric family.
pub const NETDEV_METRIC: &str = "kata_guest_netdev_stat";

/// Per interface, its counters; lines that are not this family or do not parse are skipped.
pub fn guest_netdev(text: &str) -> BTreeMap<String, LinkCounters> {
    let mut out: BTreeMap<String, LinkCounters> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(NETDEV_METRIC).and_then(|r| r.strip_prefix('{')) else { continue };
        let Some((labels, value)) = rest.split_once('}') else { continue };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        let label = |name: &str| {
            labels.split(',').find_map(|kv| kv.trim().strip_prefix(name)?.strip_prefix("=\"")?.strip_suffix('"'))
        };
        let (Some(iface), Some(item)) = (label("interface"), label("item")) else { continue };
        let c = out.entry(iface.to_owned()).or_default();
        let v = value as u64;
        match item {
            "recv_bytes" => c.rx_bytes = v,
            "recv_packets" => c.rx_packets = v,
            "recv_errs" => c.rx_errors = v,
            "recv_drop" => c.rx_dropped = v,
            "sent_bytes" => c.tx_bytes = v,
            "sent_packets" => c.tx_packets = v,
            "sent_errs" => c.tx_errors = v,
            "sent_drop" => c.tx_dropped = v,
            _ => {}
        }
    }
    out
}

/// `/proc/net/dev`'s text as GetMetrics' netdev family (what our test agent serves).
pub fn netdev_text(proc_net_dev: &str) -> String {
    const ITEMS: [&str; 16] = [
        "recv_bytes",
        "recv_packets",
        "recv_errs",
        "recv_drop",
        "recv_fifo",
        "recv_frame",
        "recv_compressed",
        "recv_multicast",
        "sent_bytes",
        "sent_packets",
        "sent_errs",
        "sent_drop",
        "sent_fifo",
        "sent_colls",
        "sent_carrier",
        "sent_compressed",
    ];
    let mut out = format!("# HELP {NETDEV_METRIC} Guest net devices statistics.\n# TYPE {NETDEV_METRIC} gauge\n");
    for line in proc_net_dev.lines().skip(2) {
        let Some((iface, numbers)) = line.split_once(':') else { continue };
        for (item, n) in ITEMS.iter().zip(numbers.split_whitespace()) {
            out.push_str(&format!("{NETDEV_METRIC}{{interface=\"{}\",item=\"{item}\"}} {n}\n", iface.trim()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn kata_agents_text_and_ours_read_back() {
        let kata = "# HELP kata_guest_netdev_stat Guest net devices statistics.\n\
            kata_guest_netdev_stat{interface=\"eth0\",item=\"recv_bytes\"} 762\n\
            kata_guest_netdev_stat{interface=\"eth0\",item=\"recv_packets\"} 9\n\
            kata_guest_netdev_stat{interface=\"eth0\",item=\"sent_bytes\"} 656\n\
            kata_guest_netdev_stat{interface=\"eth0\",item=\"sent_drop\"} 2\n\
            kata_guest_netdev_stat{interface=\"lo\",item=\"recv_bytes\"} 0\n\
            kata_agent_total_time 12.5\n";
        let m = super::guest_netdev(kata);
        let e = &m["eth0"];
        assert_eq!((e.rx_bytes, e.rx_packets, e.tx_bytes, e.tx_dropped), (762, 9, 656, 2));
        assert!(m.contains_key("lo"));
        let proc = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed\n  eth0:  1000  10 1 2 0 0 0 0  2000 20 3 4 0 0 0 0\n";
        let ours = super::guest_netdev(&super::netdev_text(proc));
        let e = &ours["eth0"];
        assert_eq!((e.rx_bytes, e.rx_packets, e.rx_errors, e.rx_dropped), (1000, 10, 1, 2));
        assert_eq!((e.tx_bytes, e.tx_packets, e.tx_errors, e.tx_dropped), (2000, 20, 3, 4));
    }
}
