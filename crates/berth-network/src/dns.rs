//! Just enough of the DNS wire format for the embedded resolver of user networks: read a
//! query's question, answer it with A records (or with no records), or say it failed.
//! Everything else is forwarded untouched.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// Lower case, without the final dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// Where the question ends in the message.
    end: usize,
}

/// The question of a standard query with exactly one, or `None` for anything else.
pub fn parse_query(msg: &[u8]) -> Option<Query> {
    if msg.len() < 12 {
        return None;
    }
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    let qr = flags >> 15;
    let opcode = (flags >> 11) & 0xf;
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    if qr != 0 || opcode != 0 || qdcount != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels: Vec<String> = Vec::new();
    loop {
        let len = *msg.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        // Compression cannot appear in a question that starts the message.
        if len > 63 {
            return None;
        }
        let label = msg.get(i..i + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        i += len;
        if i > 12 + 255 {
            return None;
        }
    }
    let qtype = u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]);
    let qclass = u16::from_be_bytes([*msg.get(i + 2)?, *msg.get(i + 3)?]);
    Some(Query {
        id: u16::from_be_bytes([msg[0], msg[1]]),
        name: labels.join("."),
        qtype,
        qclass,
        end: i + 4,
    })
}

fn header(msg: &[u8], q: &Query, rcode: u16, answers: u16) -> Vec<u8> {
    let rd = u16::from_be_bytes([msg[2], msg[3]]) & 0x0100;
    // QR, AA, RD as asked, RA.
    let flags: u16 = 0x8000 | 0x0400 | rd | 0x0080 | rcode;
    let mut out = Vec::with_capacity(q.end + 16 * answers as usize);
    out.extend_from_slice(&q.id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&answers.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&msg[12..q.end]);
    out
}

/// The answer to `q`: A records from `v4` for an A query, AAAA records from `v6` for an
/// AAAA query, no records (but no error) for other types of a name that exists.
pub fn answer(msg: &[u8], q: &Query, v4: &[Ipv4Addr], v6: &[Ipv6Addr], ttl: u32) -> Vec<u8> {
    let records: Vec<(u16, Vec<u8>)> = match (q.qtype, q.qclass) {
        (TYPE_A, CLASS_IN) => v4.iter().map(|a| (TYPE_A, a.octets().to_vec())).collect(),
        (TYPE_AAAA, CLASS_IN) => v6
            .iter()
            .map(|a| (TYPE_AAAA, a.octets().to_vec()))
            .collect(),
        _ => Vec::new(),
    };
    let mut out = header(msg, q, 0, records.len() as u16);
    for (kind, data) in records {
        out.extend_from_slice(&[0xc0, 12]);
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    out
}

/// SERVFAIL for `q` (no upstream answered).
pub fn servfail(msg: &[u8], q: &Query) -> Vec<u8> {
    header(msg, q, 2, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query as resolvers send it: id, RD, one question.
    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m
    }

    #[test]
    fn a_query_is_read_and_answered() {
        let m = query("Web.Example", TYPE_A);
        let q = parse_query(&m).unwrap();
        assert_eq!(q.name, "web.example");
        assert_eq!(q.id, 0x1234);
        let a = answer(
            &m,
            &q,
            &[Ipv4Addr::new(172, 18, 0, 2), Ipv4Addr::new(172, 19, 0, 3)],
            &[],
            600,
        );
        assert_eq!(&a[..2], &[0x12, 0x34]);
        assert_eq!(a[2] & 0x80, 0x80, "a response");
        assert_eq!(a[3] & 0x0f, 0, "no error");
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 2, "two answers");
        assert_eq!(&a[a.len() - 4..], &[172, 19, 0, 3]);
        assert_eq!(&a[12..m.len()], &m[12..], "the question is echoed");
    }

    #[test]
    fn other_types_get_no_records_and_junk_is_not_a_query() {
        let m = query("web", 28);
        let q = parse_query(&m).unwrap();
        let a = answer(&m, &q, &[Ipv4Addr::new(1, 2, 3, 4)], &[], 600);
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 0);
        assert_eq!(a.len(), m.len());
        // With an IPv6 address, AAAA answers it.
        let six: Ipv6Addr = "fd00:77::2".parse().unwrap();
        let a = answer(&m, &q, &[Ipv4Addr::new(1, 2, 3, 4)], &[six], 600);
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 1);
        assert_eq!(&a[a.len() - 16..], &six.octets());
        let m = query("other", 15);
        let q = parse_query(&m).unwrap();
        let f = servfail(&m, &q);
        assert_eq!(f[3] & 0x0f, 2);
        assert!(parse_query(&[0; 5]).is_none());
        let mut resp = m.clone();
        resp[2] |= 0x80;
        assert!(parse_query(&resp).is_none(), "a response is not a query");
        let mut cut = m.clone();
        cut.truncate(m.len() - 3);
        assert!(parse_query(&cut).is_none());
        let mut bad = m;
        bad[12] = 0xc0;
        assert!(parse_query(&bad).is_none(), "compression in a question");
    }
}
