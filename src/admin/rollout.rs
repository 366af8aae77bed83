//! The admin routes of canaries and rollouts: `POST /canary`, `POST /rollout`,
//! `GET /rollout`, `POST /rollout/{pause,resume,abort,promote}`,
//! `GET /rollout/report` (Markdown) and `GET /history`.

use std::future::Future;

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use serde::Deserialize;

use super::{Admin, dry_run_answer, json, parse_json};
use crate::color::Color;
use crate::error::{AdminError, SwitchError};
use crate::rollout::plan::RolloutBody;
use crate::rollout::report;
use crate::routing::BUCKETS;
use crate::switchboard::{Caller, CanaryRequest, Note};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryBody {
    /// The colour that gets the share (not the live one).
    color: String,
    /// 0 (clears it) to 100, in steps of 0.01.
    percent: f64,
    expect_generation: Option<u64>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    dry_run: bool,
}

impl Admin {
    pub(super) async fn route_rollout(
        &self,
        method: &Method,
        path: &str,
        body: impl Future<Output = Result<Bytes, AdminError>>,
        caller: Caller,
    ) -> Result<Response<Full<Bytes>>, AdminError> {
        let rollouts = &self.rollouts;
        let record = match (method.as_str(), path) {
            ("POST", "/canary") => return self.canary(body.await?, caller).await,
            (_, "/history") => {
                let events = self.switchboard.history();
                return Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "events": events }),
                ));
            }
            (_, "/rollout/report") => {
                let Some(record) = rollouts.view().await else {
                    return Err(no_rollout());
                };
                let text = report::markdown(&record, &self.switchboard.history());
                let mut resp = Response::new(Full::new(Bytes::from(text)));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/markdown; charset=utf-8"),
                );
                return Ok(resp);
            }
            ("POST", "/rollout") => {
                let body: RolloutBody = parse_json(body.await?)?.ok_or_else(|| {
                    AdminError::BadRequest(
                        "empty body; send JSON such as {\"to\": \"green\", \"steps\": [1, 10, 50, 100]}"
                            .into(),
                    )
                })?;
                let (started, record) = rollouts.start(body, caller).await?;
                if !started {
                    return Ok(json(
                        StatusCode::OK,
                        &serde_json::json!({ "dry_run": true, "rollout": record }),
                    ));
                }
                record
            }
            ("POST", "/rollout/pause") => rollouts.pause(caller).await?,
            ("POST", "/rollout/resume") => rollouts.resume(caller).await?,
            ("POST", "/rollout/abort") => rollouts.abort(caller).await?,
            ("POST", "/rollout/promote") => rollouts.promote(caller).await?,
            _ => rollouts.view().await.ok_or_else(no_rollout)?,
        };
        Ok(json(StatusCode::OK, &record))
    }

    async fn canary(
        &self,
        body: Bytes,
        caller: Caller,
    ) -> Result<Response<Full<Bytes>>, AdminError> {
        let body: CanaryBody = parse_json(body)?.ok_or_else(|| {
            AdminError::BadRequest(
                "empty body; send JSON such as {\"color\": \"green\", \"percent\": 10}".into(),
            )
        })?;
        let color = body
            .color
            .parse::<Color>()
            .map_err(|e| AdminError::BadRequest(e.to_string()))?;
        if !(0.0..=100.0).contains(&body.percent) {
            return Err(AdminError::BadRequest(format!(
                "percent {} is out of range; use 0 (off) to 100",
                body.percent
            )));
        }
        let weight = ((body.percent * 100.0).round() as u16).min(BUCKETS);
        if body.percent > 0.0 && weight == 0 {
            return Err(AdminError::BadRequest(
                "percent below 0.01 rounds to 0; use 0 to clear the canary".into(),
            ));
        }
        if let Some(brief) = self.rollouts.brief()
            && brief.state.is_active()
        {
            return Err(AdminError::Switch(SwitchError::Rollout(format!(
                "a rollout to {} is {}; it owns the canary: pause, abort or promote it (POST /rollout/abort)",
                brief.to,
                brief.state.as_str()
            ))));
        }
        let req = CanaryRequest {
            color,
            weight,
            expect_generation: body.expect_generation,
            force: body.force,
        };
        if body.dry_run {
            let (gate, refusal) = self.switchboard.canary_plan(req);
            let answer = serde_json::json!({
                "dry_run": true,
                "canary": { "color": color, "percent": f64::from(weight) / 100.0 },
                "gate": gate,
            });
            return Ok(dry_run_answer(answer, refusal));
        }
        let reason = if weight == 0 {
            "canary cleared".to_owned()
        } else {
            format!("canary {} % to {color}", f64::from(weight) / 100.0)
        };
        let note = Note {
            reason,
            ..Note::default()
        };
        let change = self.switchboard.canary(req, caller, note).await?;
        Ok(json(StatusCode::OK, &self.status(Some(change.changed))))
    }
}

fn no_rollout() -> AdminError {
    AdminError::NoRollout
}
