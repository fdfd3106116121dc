use capstan_sockets::netlink::{parse_attrs, parse_messages};
use capstan_table::Protocol;

use super::*;

/// The endpoint maps' user data is byte for byte what nft 1.0.6 sent for the same
/// declarations (captured with `nft --debug=mnl add map …`).
#[test]
fn endpoint_map_user_data_is_what_nft_writes() {
    let hex = |text: &str| -> Vec<u8> {
        text.split(' ')
            .map(|b| u8::from_str_radix(b, 16).expect("hex"))
            .collect()
    };
    let common = "00 04 01 00 00 00 01 04 00 00 00 00 03 1a 00 04 17 00 00 00 01 12 00 04 01 00 00 00 01 04 00 00 01 00 02 04 00 00 00 00 04 34 00 04 0d 00 00 00 01 2c 00 14 00 04 07 00 00 00 01 0c";
    let tail = |desc: &str| {
        format!(
            "01 14 00 04 07 00 00 00 01 0c 00 04 {desc} 00 00 00 01 04 02 00 00 00 06 04 00 00 00 00"
        )
    };
    let v4 = "00 04 0c 00 00 00 01 04 0c 00 00 00";
    let v6 = "00 04 0d 00 00 00 01 04 09 00 00 00";
    let cases = [
        (Family::V4, Protocol::Tcp, v4, "08"),
        (Family::V6, Protocol::Tcp, v6, "08"),
        (Family::V4, Protocol::Udp, v4, "06"),
        (Family::V4, Protocol::Sctp, v4, "0a"),
    ];
    if cfg!(target_endian = "little") {
        for (family, protocol, address, desc) in cases {
            let want = hex(&format!("{common} {address} {}", tail(desc)));
            assert_eq!(endpoints_user_data(family, protocol), want);
        }
    }
}

/// Ten thousand elements whose chains have names of the longest kind (kube-proxy's names
/// are cut at 240 bytes): split over messages whose element lists each fit a nested
/// attribute, and none lost.
#[test]
fn many_long_elements_are_split_over_messages_that_fit() {
    let map = MapRef {
        kind: MapKind::ServiceIps,
        family: Family::V6,
    };
    let chain = format!("service-{}", "x".repeat(240));
    let elements: Vec<(MapKey, Verdict)> = (0..10_000u16)
        .map(|port| {
            let key = MapKey {
                ip: Some("fd00::1".parse().unwrap()),
                protocol: Protocol::Tcp,
                port,
            };
            (key, Verdict::Goto(chain.clone()))
        })
        .collect();
    let mut transaction = Transaction::new();
    transaction.add_map_elements(map, &elements);
    let mut batch = transaction.into_batch();
    let bytes = batch.messages().bytes().to_vec();
    let (mut messages, mut found) = (0, 0);
    for message in parse_messages(&bytes).iter().skip(1) {
        messages += 1;
        for (attr, list) in parse_attrs(&message.payload[4..]) {
            if attr == 3 {
                assert!(list.len() + 4 <= usize::from(u16::MAX));
                found += parse_attrs(list).len();
            }
        }
    }
    assert_eq!(found, 10_000);
    assert!(messages > 40, "{messages} messages");
}
