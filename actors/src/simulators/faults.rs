//! Faults a simulator takes at run time: latency, error rate, outage (`PUT /v1/faults`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Added to every call.
    pub latency_ms: u64,
    /// Share of calls (0.0 to 1.0) answered with 500.
    pub error_rate: f64,
    /// Every call is answered with 503.
    pub outage: bool,
}

/// Shared by a simulator's handlers: the current faults and how many calls arrived.
#[derive(Debug, Default, Clone)]
pub struct FaultState {
    faults: Arc<Mutex<Faults>>,
    calls: Arc<AtomicU64>,
}

impl FaultState {
    pub fn get(&self) -> Faults {
        super::lock(&self.faults).clone()
    }

    pub fn set(&self, faults: Faults) {
        *super::lock(&self.faults) = faults;
    }

    /// Calls that reached the simulator (faulted or not).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Wait the latency, then count the call and maybe fail it: `Some(response)` is the failure.
    /// A slow decision: nothing is done before the latency has passed.
    pub async fn inject(&self) -> Option<HttpResponse> {
        self.answer_late().await;
        self.refuse()
    }

    /// Count the call and maybe fail it, at once: `Some(response)` is the failure. A handler that
    /// then does its work and awaits [`FaultState::answer_late`] is a slow answer: the work is
    /// done even if the caller gives up waiting (its outcome is unknown to the caller).
    pub fn refuse(&self) -> Option<HttpResponse> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let faults = self.get();
        if faults.outage {
            return Some(
                HttpResponse::ServiceUnavailable().json(json!({ "error": "simulated outage" })),
            );
        }
        if faults.error_rate > 0.0 && fastrand::f64() < faults.error_rate {
            return Some(
                HttpResponse::InternalServerError().json(json!({ "error": "simulated error" })),
            );
        }
        None
    }

    /// Wait the latency.
    pub async fn answer_late(&self) {
        let latency = self.get().latency_ms;
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
    }
}

/// `GET /v1/faults` and `PUT /v1/faults`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/faults", web::get().to(get_faults))
        .route("/v1/faults", web::put().to(put_faults));
}

async fn get_faults(state: web::Data<FaultState>) -> HttpResponse {
    HttpResponse::Ok().json(state.get())
}

async fn put_faults(state: web::Data<FaultState>, faults: web::Json<Faults>) -> HttpResponse {
    let faults = faults.into_inner();
    if !(0.0..=1.0).contains(&faults.error_rate) {
        return HttpResponse::UnprocessableEntity()
            .json(json!({ "error": "error_rate must be between 0 and 1" }));
    }
    state.set(faults.clone());
    tracing::info!(?faults, "simulator faults changed");
    HttpResponse::Ok().json(faults)
}
