//! What travels on a channel's PUB/SUB topic: one frame per event, its kind in the first
//! byte, so a publication is encoded once (its JSON, in Rust) and the publish script only
//! prefixes the offset it assigned.
//!
//! - `p<offset> <publication JSON without offset>`
//! - `j<ClientInfo JSON>`: a join
//! - `l<ClientInfo JSON>`: a leave

use hubbub_protocol::{ClientInfo, Publication};

/// One event received on a channel's topic.
#[derive(Debug)]
pub enum Frame {
    Publication(Publication),
    Join(ClientInfo),
    Leave(ClientInfo),
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty or unknown frame")]
    Unknown,
    #[error("bad offset")]
    Offset,
    #[error("bad JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The publication's JSON without its offset (the stream entry's value, and the tail of its
/// frame).
pub fn publication_json(publication: &Publication) -> String {
    if publication.offset == 0 {
        return serde_json::to_string(publication).unwrap_or_default();
    }
    let without = Publication { offset: 0, ..publication.clone() };
    serde_json::to_string(&without).unwrap_or_default()
}

/// The frame of a publication with the offset given (one published without history, whose
/// offset the caller set).
pub fn publication_frame(offset: u64, json: &str) -> Vec<u8> {
    let mut frame = Vec::with_capacity(json.len() + 22);
    frame.push(b'p');
    frame.extend_from_slice(offset.to_string().as_bytes());
    frame.push(b' ');
    frame.extend_from_slice(json.as_bytes());
    frame
}

pub fn join_frame(info: &ClientInfo) -> Vec<u8> {
    info_frame(b'j', info)
}

pub fn leave_frame(info: &ClientInfo) -> Vec<u8> {
    info_frame(b'l', info)
}

fn info_frame(kind: u8, info: &ClientInfo) -> Vec<u8> {
    let mut frame = vec![kind];
    // Serializing a ClientInfo (strings and raw JSON) into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut frame, info);
    frame
}

/// A publication read back from a stream entry (its id gives the offset).
pub fn decode_publication(offset: u64, json: &[u8]) -> Result<Publication, DecodeError> {
    let mut publication: Publication = serde_json::from_slice(json)?;
    publication.offset = offset;
    Ok(publication)
}

pub fn decode(frame: &[u8]) -> Result<Frame, DecodeError> {
    let (&kind, rest) = frame.split_first().ok_or(DecodeError::Unknown)?;
    match kind {
        b'p' => {
            let space = rest.iter().position(|&b| b == b' ').ok_or(DecodeError::Offset)?;
            let offset = std::str::from_utf8(&rest[..space])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(DecodeError::Offset)?;
            Ok(Frame::Publication(decode_publication(offset, &rest[space + 1..])?))
        }
        b'j' => Ok(Frame::Join(serde_json::from_slice(rest)?)),
        b'l' => Ok(Frame::Leave(serde_json::from_slice(rest)?)),
        _ => Err(DecodeError::Unknown),
    }
}

/// The offset of a stream entry id `<offset>-0`.
pub fn entry_offset(id: &[u8]) -> Option<u64> {
    let end = id.iter().position(|&b| b == b'-').unwrap_or(id.len());
    std::str::from_utf8(&id[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hubbub_protocol::json_from_str;

    #[test]
    fn frames_round_trip() {
        let p = Publication {
            data: json_from_str(r#"{"a":[1,2]}"#).unwrap(),
            info: Some(ClientInfo { user: "u".into(), client: "c".into(), conn_info: None, chan_info: None }),
            offset: 7,
            tags: None,
        };
        let json = publication_json(&p);
        assert!(!json.contains("offset"), "{json}");
        let Frame::Publication(back) = decode(&publication_frame(42, &json)).unwrap() else { panic!() };
        assert_eq!(back.offset, 42);
        assert_eq!(back.data.as_json().unwrap(), r#"{"a":[1,2]}"#);
        assert_eq!(back.info.unwrap().user, "u");
        let Frame::Leave(info) = decode(&leave_frame(&p.info.clone().unwrap())).unwrap() else { panic!() };
        assert_eq!(info.client, "c");
        assert!(decode(b"").is_err());
        assert!(decode(b"px {}").is_err());
        assert!(decode(b"q{}").is_err());
        assert_eq!(entry_offset(b"123-0"), Some(123));
    }
}
