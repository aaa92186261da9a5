//! Acknowledgements from upstream (`{prefix}/{gateway_id}/alarms/ack`, JSON format, with
//! `allow_writes`): the central site acknowledges the edge's alarm as `mqtt:{by}`, audited as a
//! dashboard acknowledgement is; the outcome goes to `alarms/ack/result`.

use serde_json::{json, Value as Json};

use crate::events::ack::{acknowledge, AckFailure, AckPort, Which};

/// Who may be named in `by`: a name, not a paragraph.
const MAX_BY: usize = 64;

/// `{"eventIds": [...] | "eventId" | "deviceId", "by", "comment"?, "requestId"?}` → the result.
pub async fn serve(port: &AckPort, payload: &[u8]) -> Json {
    let request: Json = match serde_json::from_slice(payload) {
        Ok(j @ Json::Object(_)) => j,
        _ => return failed(&Json::Null, 400, "not a JSON object".into()),
    };
    let request_id = request.get("requestId").cloned().unwrap_or(Json::Null);
    let by = match request.get("by").and_then(Json::as_str) {
        Some(b) if !b.trim().is_empty() && b.chars().count() <= MAX_BY => b.trim(),
        _ => {
            return failed(
                &request_id,
                400,
                format!("`by` is required: who acknowledges (at most {MAX_BY} characters)"),
            )
        }
    };
    let comment = match request.get("comment") {
        None | Some(Json::Null) => "",
        Some(Json::String(c)) => c.as_str(),
        Some(_) => return failed(&request_id, 400, "`comment` must be a string".into()),
    };
    let which = match (
        request.get("eventIds"),
        request.get("eventId"),
        request.get("deviceId"),
    ) {
        (Some(Json::Array(ids)), _, _) => {
            let ids: Option<Vec<String>> =
                ids.iter().map(|i| i.as_str().map(str::to_string)).collect();
            match ids {
                Some(ids) if !ids.is_empty() && ids.len() <= 1000 => Which::Many(ids),
                _ => {
                    return failed(
                        &request_id,
                        400,
                        "`eventIds` must be 1 to 1000 event ids".into(),
                    )
                }
            }
        }
        (None, Some(Json::String(id)), _) => Which::One(id.clone()),
        (None, None, Some(Json::String(d))) => Which::Device(d.clone()),
        _ => return failed(&request_id, 400, "give `eventIds` or `deviceId`".into()),
    };
    let user = format!("mqtt:{by}");
    match acknowledge(port, which, &user, comment).await {
        Ok(done) => json!({
            "requestId": request_id,
            "code": 200,
            "acked": done.acked,
            "ackedBy": user,
            "ackedAt": crate::model::rfc3339(done.ts),
        }),
        Err(e) => {
            let code = match e {
                AckFailure::BadRequest(_) => 400,
                AckFailure::NotFound(_) => 404,
                AckFailure::Internal(_) => 500,
            };
            failed(&request_id, code, e.to_string())
        }
    }
}

pub fn failed(request_id: &Json, code: u16, msg: String) -> Json {
    json!({"requestId": request_id, "code": code, "msg": msg})
}
