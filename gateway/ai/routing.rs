//! Which model answers: a `/model provider,model` (or `/model model`) first line in the first user message,
//! then an explicit catalog model or alias, then `model: "auto"` through a profile chosen by the
//! `x-gateway-profile` header or `metadata.profile`, else the auto profile. Route policy may restrict models
//! and profiles. The result is a plan: the ordered candidates (the fallback chain) and why.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::{Map, Value};

use http::HeaderMap;

use super::catalog::{Catalog, Model};
use super::dialect::openai;
use super::guard::{GuardReport, SystemPrompt};
use super::heuristics::choose;
use crate::error::Rejection;

/// A route's restrictions on models and profiles (empty lists allow everything), and its system prompt.
#[derive(Debug, Clone, Default)]
pub struct AiPolicy {
    pub allowed_models: Vec<String>,
    pub allowed_profiles: Vec<String>,
    pub system_prompt: Option<SystemPrompt>,
}

impl AiPolicy {
    pub fn is_unrestricted(&self) -> bool {
        self.allowed_models.is_empty() && self.allowed_profiles.is_empty()
    }

    /// Both restrictions at once (a route's and a consumer's); the system prompt stays this policy's.
    pub fn narrowed(&self, other: &AiPolicy) -> AiPolicy {
        let both = |mine: &[String], theirs: &[String]| -> Vec<String> {
            match (mine.is_empty(), theirs.is_empty()) {
                (true, _) => theirs.to_vec(),
                (_, true) => mine.to_vec(),
                // Nothing in common must stay a restriction: an impossible name keeps the list non-empty.
                _ => {
                    let common: Vec<String> = mine
                        .iter()
                        .filter(|m| theirs.contains(m))
                        .cloned()
                        .collect();
                    if common.is_empty() {
                        vec![String::new()]
                    } else {
                        common
                    }
                }
            }
        };
        AiPolicy {
            allowed_models: both(&self.allowed_models, &other.allowed_models),
            allowed_profiles: both(&self.allowed_profiles, &other.allowed_profiles),
            system_prompt: self.system_prompt.clone(),
        }
    }
}

/// What will be tried, in order, and why.
#[derive(Debug, Clone)]
pub struct Plan {
    pub candidates: Vec<Arc<Model>>,
    pub profile: Option<String>,
    /// Short reason for `x-gateway-decision`, e.g. `explicit`, `command`, `profile:header`.
    pub decision: Cow<'static, str>,
}

/// Pull a `/model X` first line out of the first user message; returns X and rewrites the message.
pub fn take_model_command(body: &mut Map<String, Value>) -> Option<String> {
    let messages = body.get_mut("messages")?.as_array_mut()?;
    let first_user = messages
        .iter_mut()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?;
    let content = first_user.get_mut("content")?;
    // Plain string content, or the first text part of a multi-part content.
    let text_value = match content {
        Value::String(_) => content,
        Value::Array(parts) => parts
            .iter_mut()
            .find(|p| p.get("type").and_then(Value::as_str) == Some("text"))?
            .get_mut("text")?,
        _ => return None,
    };
    let Value::String(text) = text_value else {
        return None;
    };
    strip_command(text)
}

fn strip_command(text: &mut String) -> Option<String> {
    let rest = text.trim_start().strip_prefix("/model ")?;
    let (line, remainder) = rest.split_once('\n').unwrap_or((rest, ""));
    let target = line.trim().to_string();
    if target.is_empty() {
        return None;
    }
    *text = remainder.to_string();
    Some(target)
}

fn allowed(policy: &[String], name: &str) -> bool {
    policy.is_empty() || policy.iter().any(|p| p == name)
}

/// Decide the plan for a request body (already parsed; a `/model` line is stripped from it).
pub fn decide(
    catalog: &Catalog,
    body: &mut Map<String, Value>,
    headers: &HeaderMap,
    policy: &AiPolicy,
    report: &GuardReport,
) -> Result<Plan, Rejection> {
    let mut plan = decide_unfiltered(catalog, body, headers, policy, report)?;
    if report.local_only {
        plan.candidates.retain(|m| m.local);
        if plan.candidates.is_empty() {
            return Err(Rejection::typed(
                403,
                "permission_error",
                "no_local_model",
                "the request contains data that may only go to local models, and none is available for it",
            ));
        }
        plan.decision.to_mut().push_str("+local-only");
    }
    Ok(plan)
}

fn decide_unfiltered(
    catalog: &Catalog,
    body: &mut Map<String, Value>,
    headers: &HeaderMap,
    policy: &AiPolicy,
    report: &GuardReport,
) -> Result<Plan, Rejection> {
    let header_profile = headers
        .get("x-gateway-profile")
        .and_then(|v| v.to_str().ok());
    if let Some(target) = take_model_command(body) {
        let model = match target.split_once(',') {
            Some((provider, model)) => catalog.provider_model(provider.trim(), model.trim()),
            None => catalog.model(&target),
        };
        let model = model.ok_or_else(|| openai::model_not_found(&target))?;
        return single(model, policy, "command");
    }
    // A `model` that is not a string was refused with the request's shape (openai::check_request_shape).
    let requested = body.get("model").and_then(Value::as_str).unwrap_or("auto");
    if requested != "auto" {
        let model = catalog
            .model(requested)
            .ok_or_else(|| openai::model_not_found(requested))?;
        let decision = if *model.name == *requested {
            "explicit"
        } else {
            "alias"
        };
        return single(model, policy, decision);
    }
    let metadata_profile = body
        .get("metadata")
        .and_then(|m| m.get("profile"))
        .and_then(Value::as_str);
    let (profile, decision) = match (header_profile, metadata_profile) {
        (Some(p), _) => (p.to_string(), Cow::Borrowed("profile:header")),
        (None, Some(p)) => (p.to_string(), Cow::Borrowed("profile:metadata")),
        (None, None) => match choose(&catalog.rules, body, headers, !report.detected.is_empty()) {
            Some(rule) => (
                rule.profile.clone(),
                Cow::Owned(format!("heuristic:{}", rule.name)),
            ),
            None => (
                catalog.auto_profile.clone(),
                Cow::Borrowed("profile:default"),
            ),
        },
    };
    let Some(chain) = catalog.profiles.get(&profile) else {
        return Err(Rejection::typed(
            400,
            "invalid_request_error",
            "unknown_profile",
            format!("there is no profile `{profile}`"),
        ));
    };
    if !allowed(&policy.allowed_profiles, &profile) {
        return Err(Rejection::typed(
            403,
            "permission_error",
            "profile_not_allowed",
            format!("the profile `{profile}` is not allowed here"),
        ));
    }
    let candidates: Vec<Arc<Model>> = chain
        .iter()
        .filter(|m| allowed(&policy.allowed_models, &m.name))
        .cloned()
        .collect();
    if candidates.is_empty() {
        return Err(Rejection::typed(
            403,
            "permission_error",
            "model_not_allowed",
            format!("no model of profile `{profile}` is allowed here"),
        ));
    }
    Ok(Plan {
        candidates,
        profile: Some(profile),
        decision,
    })
}

fn single(
    model: &Arc<Model>,
    policy: &AiPolicy,
    decision: &'static str,
) -> Result<Plan, Rejection> {
    if !allowed(&policy.allowed_models, &model.name) {
        return Err(Rejection::typed(
            403,
            "permission_error",
            "model_not_allowed",
            format!("the model `{}` is not allowed here", model.name),
        )
        .with_param("model"));
    }
    Ok(Plan {
        candidates: vec![model.clone()],
        profile: None,
        decision: Cow::Borrowed(decision),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_command_is_read_and_stripped() {
        let mut body: Map<String, Value> = serde_json::from_str(
            r#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"/model local,llama3\nhello there"}]}"#,
        )
        .unwrap();
        assert_eq!(
            take_model_command(&mut body).as_deref(),
            Some("local,llama3")
        );
        assert_eq!(body["messages"][1]["content"], "hello there");
        assert_eq!(take_model_command(&mut body), None);
        let mut text = "/model gpt-4o".to_string();
        assert_eq!(strip_command(&mut text).as_deref(), Some("gpt-4o"));
        assert_eq!(text, "");
        let mut parts: Map<String, Value> = serde_json::from_str(
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"/model m1\nq"}]}]}"#,
        )
        .unwrap();
        assert_eq!(take_model_command(&mut parts).as_deref(), Some("m1"));
        assert_eq!(parts["messages"][0]["content"][1]["text"], "q");
    }
}
