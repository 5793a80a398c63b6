//! `POST /v1/txn`: compare-then-ops in one atomic step, etcd style. This file turns the JSON of
//! docs/api.md into a [`Txn`] (checking every limit first) and the answer back into JSON.

use axum::body::Body;
use axum::extract::RawQuery;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use serde_json::Value;

use super::check_key;
use super::idempotency_key;
use super::json_value;
use super::read_barrier;
use super::read_json;
use super::unexpected;
use super::value_json;
use super::with_headers;
use super::write;
use super::ApiError;
use super::AppState;
use super::Consistency;
use super::Query;
use crate::limits;
use crate::state_machine::Command;
use crate::state_machine::Compare;
use crate::state_machine::CompareOp;
use crate::state_machine::CompareTarget;
use crate::state_machine::Success;
use crate::state_machine::Txn;
use crate::state_machine::TxnOp;
use crate::state_machine::TxnOpResult;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnJson {
    #[serde(default)]
    compare: Vec<CompareJson>,
    #[serde(default)]
    success: Vec<OpJson>,
    #[serde(default)]
    failure: Vec<OpJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareJson {
    key: String,
    target: String,
    op: String,
    version: Option<u64>,
    value: Option<String>,
    value_base64: Option<String>,
    exists: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum OpJson {
    Put(PutJson),
    Delete(KeyJson),
    Get(KeyJson),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutJson {
    key: String,
    value: Option<String>,
    value_base64: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyJson {
    key: String,
}

fn compare(c: CompareJson, i: usize, value_bytes: &mut usize) -> Result<Compare, ApiError> {
    let what = format!("compare[{i}]");
    check_key(&c.key).map_err(|e| ApiError::InvalidRequest(format!("{what}: {e}")))?;
    let op = match c.op.as_str() {
        "==" => CompareOp::Eq,
        "!=" => CompareOp::Ne,
        "<" => CompareOp::Lt,
        ">" => CompareOp::Gt,
        other => {
            return Err(ApiError::InvalidRequest(format!(
                "{what}: op must be ==, !=, < or >, not {other:?}"
            )))
        }
    };
    let target = match c.target.as_str() {
        "version" => CompareTarget::Version(c.version.ok_or_else(|| {
            ApiError::InvalidRequest(format!("{what}: target version needs a \"version\""))
        })?),
        "value" => {
            let value = json_value(c.value, c.value_base64, &what)?;
            *value_bytes += value.len();
            CompareTarget::Value(value)
        }
        "exists" => {
            if !matches!(op, CompareOp::Eq | CompareOp::Ne) {
                return Err(ApiError::InvalidRequest(format!(
                    "{what}: exists can only be compared with == or !="
                )));
            }
            CompareTarget::Exists(c.exists.ok_or_else(|| {
                ApiError::InvalidRequest(format!("{what}: target exists needs \"exists\""))
            })?)
        }
        other => {
            return Err(ApiError::InvalidRequest(format!(
                "{what}: target must be version, value or exists, not {other:?}"
            )))
        }
    };
    Ok(Compare {
        key: c.key,
        op,
        target,
    })
}

fn ops(branch: &str, ops: Vec<OpJson>, value_bytes: &mut usize) -> Result<Vec<TxnOp>, ApiError> {
    if ops.len() > limits::TXN_OPS_MAX {
        return Err(ApiError::InvalidRequest(format!(
            "{branch} has {} ops; at most {} are allowed",
            ops.len(),
            limits::TXN_OPS_MAX
        )));
    }
    let mut written = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(ops.len());
    for (i, op) in ops.into_iter().enumerate() {
        let what = format!("{branch}[{i}]");
        let op = match op {
            OpJson::Put(p) => {
                let value = json_value(p.value, p.value_base64, &what)?;
                *value_bytes += value.len();
                TxnOp::Put { key: p.key, value }
            }
            OpJson::Delete(k) => TxnOp::Delete { key: k.key },
            OpJson::Get(k) => TxnOp::Get { key: k.key },
        };
        check_key(op.key()).map_err(|e| ApiError::InvalidRequest(format!("{what}: {e}")))?;
        if op.is_write() && !written.insert(op.key().to_string()) {
            return Err(ApiError::InvalidRequest(format!(
                "{what}: key {:?} is written twice in {branch}",
                op.key()
            )));
        }
        out.push(op);
    }
    Ok(out)
}

pub fn parse(body: TxnJson) -> Result<Txn, ApiError> {
    if body.compare.len() > limits::TXN_COMPARES_MAX {
        return Err(ApiError::InvalidRequest(format!(
            "{} compares; at most {} are allowed",
            body.compare.len(),
            limits::TXN_COMPARES_MAX
        )));
    }
    // Compare values and put values share one budget: both go into the log entry.
    let mut value_bytes = 0;
    let compare = body
        .compare
        .into_iter()
        .enumerate()
        .map(|(i, c)| compare(c, i, &mut value_bytes))
        .collect::<Result<Vec<_>, _>>()?;
    let success = ops("success", body.success, &mut value_bytes)?;
    let failure = ops("failure", body.failure, &mut value_bytes)?;
    if value_bytes > limits::TXN_VALUE_BYTES_MAX {
        return Err(ApiError::TooLarge(format!(
            "the txn carries {value_bytes} bytes of values; at most {} are allowed",
            limits::TXN_VALUE_BYTES_MAX
        )));
    }
    Ok(Txn {
        compare,
        success,
        failure,
    })
}

fn result_json(result: &TxnOpResult) -> Value {
    match result {
        TxnOpResult::Put { version } => json!({ "put": { "version": version } }),
        TxnOpResult::Delete { deleted } => json!({ "delete": { "deleted": deleted } }),
        TxnOpResult::Get(None) => json!({ "get": null }),
        TxnOpResult::Get(Some(got)) => {
            let mut m = serde_json::Map::new();
            m.insert("key".into(), got.key.clone().into());
            value_json(&mut m, &got.value);
            m.insert("version".into(), got.version.into());
            json!({ "get": m })
        }
    }
}

pub async fn txn(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    Query::parse(raw.as_deref(), &[])?;
    let idempotency_key = idempotency_key(&headers)?;
    let txn = parse(read_json(body).await?)?;
    // A txn that writes nothing is a read: it is answered from a linearizable view, with no log
    // entry and no stored answer.
    let served = if txn.is_read_only() {
        let leader = read_barrier(&state.service, Consistency::Linearizable).await?;
        let value = state.service.reader().query(&txn).await??;
        crate::service::Served { value, leader }
    } else {
        write(&state.service, Command::Txn(txn), idempotency_key).await?
    };
    let Success::Txn {
        succeeded,
        results,
        revision,
    } = served.value
    else {
        return Err(unexpected(served.value));
    };
    let results: Vec<Value> = results.iter().map(result_json).collect();
    let body = json!({ "succeeded": succeeded, "results": results, "revision": revision });
    Ok(with_headers(
        Json(body).into_response(),
        served.leader,
        None,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Txn, ApiError> {
        let body: TxnJson =
            serde_json::from_str(s).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
        parse(body)
    }

    #[test]
    fn the_api_md_example_parses() {
        let txn = parse_str(
            r#"{"compare": [{"key": "a", "target": "version", "op": "==", "version": 3},
                            {"key": "b", "target": "value", "op": "==", "value": "S"},
                            {"key": "c", "target": "exists", "op": "==", "exists": false}],
                "success": [{"put": {"key": "a", "value": "S"}}, {"delete": {"key": "b"}}, {"get": {"key": "c"}}],
                "failure": [{"get": {"key": "a"}}]}"#,
        )
        .unwrap();
        assert_eq!(txn.compare.len(), 3);
        assert_eq!(txn.compare[2].target, CompareTarget::Exists(false));
        assert_eq!(
            txn.success[0],
            TxnOp::Put {
                key: "a".into(),
                value: b"S".to_vec()
            }
        );
        assert_eq!(txn.failure.len(), 1);
    }

    #[test]
    fn bad_txns_are_refused() {
        for bad in [
            r#"{"compare": [{"key": "a", "target": "version", "op": "=~", "version": 3}]}"#,
            r#"{"compare": [{"key": "a", "target": "version", "op": "=="}]}"#,
            r#"{"compare": [{"key": "a", "target": "exists", "op": "<", "exists": true}]}"#,
            r#"{"compare": [{"key": "", "target": "version", "op": "==", "version": 1}]}"#,
            r#"{"success": [{"put": {"key": "a", "value": "1"}}, {"delete": {"key": "a"}}]}"#,
            r#"{"success": [{"put": {"key": "a"}}]}"#,
            r#"{"success": [{"frobnicate": {"key": "a"}}]}"#,
            r#"{"bogus": []}"#,
        ] {
            assert!(parse_str(bad).is_err(), "{bad} should be refused");
        }
        // Compare values count towards the txn's value budget (the review's tenth defect).
        let big = "v".repeat(limits::VALUE_BYTES_MAX);
        let compares: Vec<String> = (0..5)
            .map(|i| {
                format!(r#"{{"key": "k{i}", "target": "value", "op": "==", "value": "{big}"}}"#)
            })
            .collect();
        assert!(matches!(
            parse_str(&format!(r#"{{"compare": [{}]}}"#, compares.join(","))),
            Err(ApiError::TooLarge(_))
        ));
        let many: Vec<String> = (0..=limits::TXN_OPS_MAX)
            .map(|i| format!(r#"{{"get": {{"key": "k{i}"}}}}"#))
            .collect();
        assert!(parse_str(&format!(r#"{{"success": [{}]}}"#, many.join(","))).is_err());
    }

    #[test]
    fn results_render_as_documented() {
        assert_eq!(result_json(&TxnOpResult::Get(None)), json!({ "get": null }));
        assert_eq!(
            result_json(&TxnOpResult::Put { version: 4 }),
            json!({ "put": { "version": 4 } })
        );
    }
}
