//! Delta compression of publications for the subscribers that negotiated it
//! (`SubscribeRequest::delta = "fossil"`, granted by the namespace's `allowed_delta_types`).
//!
//! In the JSON protocol such a subscriber gets every publication's data as a JSON *string*:
//! the publication's JSON text itself (`delta: false`), or a fossil delta that turns the
//! previous publication's text into this one (`delta: true`). centrifuge-js applies the
//! delta to the bytes of the text it kept and parses the result.

use hubbub_protocol::Json;

/// The data of a full publication for a delta subscriber: its JSON text as a JSON string.
pub fn json_string_form(data: &Json) -> Json {
    // A string holding valid JSON serializes to a valid JSON string, always.
    let quoted = serde_json::to_string(data.get()).expect("a string serializes");
    serde_json::value::RawValue::from_string(quoted).expect("a JSON string is JSON").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_form_round_trips() {
        let data = hubbub_protocol::json_from_str(r#"{"text":"héllo \"you\"\n","n":[1,2]}"#).unwrap();
        let form = json_string_form(&data);
        let back: String = serde_json::from_str(form.get()).unwrap();
        assert_eq!(back, data.get());
    }
}
