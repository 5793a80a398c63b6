//! `POST /v1/txn`: compare-then-ops in one atomic step, etcd style. This file turns the JSON of
//! docs/api.md (`metrokv_api::txn`) into a [`Txn`] (checking every limit first) and the answer
//! back into its wire form.

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use metrokv_api::txn as wire;

use super::auth::Caller;
use super::auth::Role;
use super::check_key;
use super::extract::IdempotencyKey;
use super::extract::JsonBody;
use super::extract::NoQuery;
use super::json_value;
use super::read_barrier;
use super::unexpected;
use super::write;
use super::ApiError;
use super::AppState;
use super::Consistency;
use crate::limits;
use crate::state_machine::Command;
use crate::state_machine::Compare;
use crate::state_machine::CompareOp;
use crate::state_machine::CompareTarget;
use crate::state_machine::Success;
use crate::state_machine::Txn;
use crate::state_machine::TxnOp;
use crate::state_machine::TxnOpResult;

fn compare(c: wire::Compare, i: usize, value_bytes: &mut usize) -> Result<Compare, ApiError> {
    let what = format!("compare[{i}]");
    check_key(&c.key).map_err(|e| ApiError::InvalidRequest(format!("{what}: {e}")))?;
    let op = match c.op {
        wire::CompareOp::Eq => CompareOp::Eq,
        wire::CompareOp::Ne => CompareOp::Ne,
        wire::CompareOp::Lt => CompareOp::Lt,
        wire::CompareOp::Gt => CompareOp::Gt,
    };
    let target = match c.target {
        wire::CompareTarget::Version => CompareTarget::Version(c.version.ok_or_else(|| {
            ApiError::InvalidRequest(format!("{what}: target version needs a \"version\""))
        })?),
        wire::CompareTarget::Value => {
            let value = json_value(c.value.as_deref(), c.value_base64.as_deref(), &what)?;
            *value_bytes += value.len();
            CompareTarget::Value(value)
        }
        wire::CompareTarget::Exists => {
            if !matches!(op, CompareOp::Eq | CompareOp::Ne) {
                return Err(ApiError::InvalidRequest(format!(
                    "{what}: exists can only be compared with == or !="
                )));
            }
            CompareTarget::Exists(c.exists.ok_or_else(|| {
                ApiError::InvalidRequest(format!("{what}: target exists needs \"exists\""))
            })?)
        }
    };
    Ok(Compare {
        key: c.key,
        op,
        target,
    })
}

fn ops(branch: &str, ops: Vec<wire::Op>, value_bytes: &mut usize) -> Result<Vec<TxnOp>, ApiError> {
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
            wire::Op::Put(p) => {
                let value = json_value(p.value.as_deref(), p.value_base64.as_deref(), &what)?;
                *value_bytes += value.len();
                TxnOp::Put { key: p.key, value }
            }
            wire::Op::Delete(k) => TxnOp::Delete { key: k.key },
            wire::Op::Get(k) => TxnOp::Get { key: k.key },
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

pub fn parse(body: wire::TxnRequest) -> Result<Txn, ApiError> {
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

fn result_body(result: &TxnOpResult) -> wire::OpResult {
    match result {
        TxnOpResult::Put { version } => wire::OpResult::Put(wire::PutResult { version: *version }),
        TxnOpResult::Delete { deleted } => {
            wire::OpResult::Delete(wire::DeleteResult { deleted: *deleted })
        }
        TxnOpResult::Get(got) => wire::OpResult::Get(
            got.as_ref()
                .map(|g| wire::Got::new(g.key.as_str(), &g.value, g.version)),
        ),
    }
}

pub async fn txn(
    State(state): State<AppState>,
    caller: Caller,
    _: NoQuery,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    JsonBody(body): JsonBody<wire::TxnRequest>,
) -> Result<Response, ApiError> {
    let txn = parse(body)?;
    if !txn.is_read_only() {
        caller.need(Role::Write, "write in a txn")?;
    }
    let ops = txn.success.iter().chain(&txn.failure).map(|op| match op {
        TxnOp::Put { key, .. } | TxnOp::Delete { key } | TxnOp::Get { key } => key,
    });
    for key in txn.compare.iter().map(|c| &c.key).chain(ops) {
        caller.key(key)?;
    }
    // A txn that writes nothing is a read: it is answered from a linearizable view, with no log
    // entry and no stored answer.
    let served = if txn.is_read_only() {
        let barrier = read_barrier(&state.service, Consistency::Linearizable).await?;
        let value = state.service.reader().query(&txn).await??;
        barrier.settle(&state.service).await?;
        crate::service::Served {
            value,
            leader: barrier.leader,
        }
    } else {
        write(&state.service, Command::Txn(txn), idempotency_key).await?
    };
    let Success::Txn {
        succeeded,
        results,
        revision,
    } = &served.value
    else {
        return Err(unexpected(served.value));
    };
    Ok(served.answer(Json(wire::TxnAnswer {
        succeeded: *succeeded,
        results: results.iter().map(result_body).collect(),
        revision: *revision,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Txn, ApiError> {
        parse(super::super::parse_json(s.as_bytes())?)
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
            r#"[[], [], []]"#,
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
        let json = |r: &TxnOpResult| serde_json::to_string(&result_body(r)).unwrap();
        assert_eq!(json(&TxnOpResult::Get(None)), r#"{"get":null}"#);
        assert_eq!(
            json(&TxnOpResult::Put { version: 4 }),
            r#"{"put":{"version":4}}"#
        );
    }
}
