//! Compile the `ai:` section: providers (deployments become a cluster with health checks and a circuit
//! breaker), models, aliases and profiles, every error with its YAML path.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::cluster::{self, BackendInput, ClusterInput};
use super::context::Compiler;
use super::schema::*;
use super::units::DurationOr;
use regex::Regex;

use crate::ai::catalog::{
    AiTimeouts, Catalog, Deployment, MockSettings, Model, Provider, ProviderKind,
};
use crate::ai::guard::{
    builtin, Detector, Guards, PiiAction, PromptMode, SystemPrompt, ToolPolicy, ToolViolation,
    BUILTIN_DETECTORS,
};
use crate::ai::heuristics::{words_regex, Condition, Rule};
use crate::ai::secrets::SecretMasker;
use crate::upstream::cluster::UpstreamTls;
use crate::upstream::url::HttpUrl;

const DEFAULT_AI_MAX_BODY: u64 = 10 * 1024 * 1024;
const DEFAULT_AI_MAX_ANSWER: u64 = 64 * 1024 * 1024;

pub(super) fn compile_ai(c: &mut Compiler, ai: &AiSection) -> Catalog {
    let mut providers: HashMap<String, Arc<Provider>> = HashMap::new();
    let mut ordered = Vec::new();
    for (i, section) in ai.providers.iter().enumerate() {
        let path = format!("ai.providers[{i}]");
        if providers.contains_key(&section.name) {
            c.error(
                format!("{path}.name"),
                format!("duplicate provider name `{}`", section.name),
            );
            continue;
        }
        if let Some(provider) = compile_provider(c, section, &path) {
            let provider = Arc::new(provider);
            providers.insert(section.name.clone(), provider.clone());
            ordered.push(provider);
        }
    }
    let mut models = Vec::new();
    let mut names = HashSet::new();
    for (i, section) in ai.models.iter().enumerate() {
        let path = format!("ai.models[{i}]");
        if !names.insert(section.name.as_str()) {
            c.error(
                format!("{path}.name"),
                format!("duplicate model name `{}`", section.name),
            );
            continue;
        }
        let Some(provider) = providers.get(&section.provider) else {
            c.error(
                format!("{path}.provider"),
                format!("no provider named `{}`", section.provider),
            );
            continue;
        };
        if section.max_tokens_field.is_some() && provider.kind != ProviderKind::OpenAi {
            c.error(
                format!("{path}.max_tokens_field"),
                "applies to `type: openai` providers only (the others get the cap under their own name): remove it",
            );
        }
        for (j, capability) in section.capabilities.iter().enumerate() {
            if !["tools", "vision", "reasoning", "long_context"].contains(&capability.as_str()) {
                c.error(
                    format!("{path}.capabilities[{j}]"),
                    format!("`{capability}`: use tools, vision, reasoning or long_context"),
                );
            }
        }
        models.push(Arc::new(Model {
            name: Arc::from(section.name.as_str()),
            name_header: name_header(c, format!("{path}.name"), &section.name),
            provider: provider.clone(),
            upstream_model: Arc::from(section.upstream_model.as_deref().unwrap_or(&section.name)),
            context_window: section.context_window,
            max_tokens: section.max_tokens,
            max_completion_tokens: section.max_tokens_field
                == Some(MaxTokensFieldSection::MaxCompletionTokens),
            prices: crate::ai::usage::Prices {
                input: section.input_price,
                output: section.output_price,
                cache_read: section.cache_read_price,
                cache_write: section.cache_write_price,
            },
            capabilities: section.capabilities.clone(),
            local: section.local,
            metrics: crate::observe::metrics::ModelMetrics::for_model(&section.name),
        }));
    }
    let known = |name: &str| models.iter().find(|m| &*m.name == name).cloned();
    let mut aliases = HashMap::new();
    for (alias, target) in &ai.aliases {
        if known(target).is_none() {
            c.error(
                format!("ai.aliases.{alias}"),
                format!("no model named `{target}`"),
            );
        } else if known(alias).is_some() {
            c.error(
                format!("ai.aliases.{alias}"),
                "an alias cannot shadow a model name",
            );
        } else {
            aliases.insert(alias.clone(), target.clone());
        }
    }
    let mut profiles = HashMap::new();
    let mut profile_prompts = HashMap::new();
    for (name, section) in &ai.profiles {
        name_header(c, format!("ai.profiles.{name}"), name);
        let list = section.models();
        if let Some(prompt) = section.system_prompt() {
            profile_prompts.insert(name.clone(), system_prompt(prompt));
        }
        let mut chain = Vec::new();
        for (j, model) in list.iter().enumerate() {
            let resolved = known(model).or_else(|| aliases.get(model).and_then(|t| known(t)));
            match resolved {
                Some(model) => chain.push(model),
                None => c.error(
                    format!("ai.profiles.{name}[{j}]"),
                    format!("no model or alias named `{model}`"),
                ),
            }
        }
        if chain.is_empty() && !list.is_empty() {
            continue;
        }
        if list.is_empty() {
            c.error(
                format!("ai.profiles.{name}"),
                "a profile lists at least one model",
            );
        }
        profiles.insert(name.clone(), chain);
    }
    let auto_profile = ai
        .auto_profile
        .clone()
        .unwrap_or_else(|| "default".to_string());
    if !models.is_empty() && !profiles.contains_key(&auto_profile) {
        c.error(
            "ai.auto_profile",
            format!("no profile named `{auto_profile}` (`model: \"auto\"` uses it)"),
        );
    }
    let attempts = ai.attempts.unwrap_or(3);
    if attempts == 0 {
        c.error("ai.attempts", "must be at least 1");
    }
    let rules = compile_rules(c, &ai.rules, &profiles);
    let guards = compile_guards(c, &ai.guards);
    let max_body = ai.max_body_size.map_or(DEFAULT_AI_MAX_BODY, |s| s.0);
    let mut catalog = Catalog::new(
        ordered,
        models,
        aliases,
        profiles,
        auto_profile,
        attempts,
        max_body,
    );
    catalog.max_answer_size = ai.max_answer_size.map_or(DEFAULT_AI_MAX_ANSWER, |s| s.0);
    catalog.rules = rules;
    catalog.guards = guards;
    catalog.secrets = compile_secrets(c, &ai.guards.response_secrets);
    catalog.profile_prompts = profile_prompts;
    catalog
}

/// A name the AI answers carry in a response header (`x-gateway-provider`, `-model`, `-profile`, and a rule's
/// in `-decision`) as a header value; `at` is its YAML path, named in the error.
fn name_header(c: &mut Compiler, at: String, name: &str) -> HeaderValue {
    HeaderValue::from_str(name).unwrap_or_else(|_| {
        c.error(
            at,
            "the name is sent in a response header: use no control characters",
        );
        HeaderValue::from_static("")
    })
}

fn compile_secrets(c: &mut Compiler, section: &ResponseSecretsSection) -> Option<SecretMasker> {
    let custom = compile_regexes(c, &section.custom, "ai.guards.response_secrets.custom");
    section.enabled.then(|| SecretMasker::new(custom))
}

/// Compile a list of regexes, reporting each bad one at `path[i]`.
fn compile_regexes(c: &mut Compiler, patterns: &[String], path: &str) -> Vec<Regex> {
    patterns
        .iter()
        .enumerate()
        .filter_map(|(i, pattern)| match Regex::new(pattern) {
            Ok(regex) => Some(regex),
            Err(e) => {
                c.error(format!("{path}[{i}]"), format!("invalid regex: {e}"));
                None
            }
        })
        .collect()
}

fn compile_rules(
    c: &mut Compiler,
    rules: &[RuleSection],
    profiles: &HashMap<String, Vec<Arc<Model>>>,
) -> Vec<Rule> {
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let path = format!("ai.rules[{i}]");
        name_header(c, format!("{path}.name"), &rule.name);
        if !profiles.contains_key(&rule.profile) {
            c.error(
                format!("{path}.profile"),
                format!("no profile named `{}`", rule.profile),
            );
        }
        let mut conditions = Vec::new();
        if let Some(limit) = rule.prompt_tokens_over {
            conditions.push(Condition::PromptTokensOver(limit));
        }
        if let Some(pattern) = &rule.keywords {
            match Regex::new(pattern) {
                Ok(regex) => conditions.push(Condition::Keywords(regex)),
                Err(e) => c.error(format!("{path}.keywords"), format!("invalid regex: {e}")),
            }
        }
        if !rule.words.is_empty() {
            match words_regex(&rule.words) {
                Ok(regex) => conditions.push(Condition::Keywords(regex)),
                Err(message) => c.error(format!("{path}.words"), message),
            }
        }
        if rule.has_tools == Some(true) {
            conditions.push(Condition::HasTools);
        }
        if rule.has_images == Some(true) {
            conditions.push(Condition::HasImages);
        }
        if rule.pii_detected == Some(true) {
            conditions.push(Condition::PiiDetected);
        }
        if let Some(header) = &rule.header {
            match (
                HeaderName::from_bytes(header.name.as_bytes()),
                HeaderValue::from_str(&header.value),
            ) {
                (Ok(name), Ok(value)) => conditions.push(Condition::Header(name, value)),
                _ => c.error(
                    format!("{path}.header"),
                    "not a valid header name and value",
                ),
            }
        }
        match conditions.len() {
            1 => out.push(Rule { name: rule.name.clone(), condition: conditions.remove(0), profile: rule.profile.clone() }),
            0 => c.error(path, "give one condition: prompt_tokens_over, keywords, words, has_tools, has_images, pii_detected or header"),
            _ => c.error(path, "give exactly one condition per rule (write several rules for several conditions)"),
        }
    }
    out
}

fn pii_action(action: PiiActionSection) -> PiiAction {
    match action {
        PiiActionSection::Mask => PiiAction::Mask,
        PiiActionSection::Reject => PiiAction::Reject,
        PiiActionSection::RouteLocal => PiiAction::RouteLocal,
    }
}

pub(super) fn system_prompt(section: &SystemPromptSection) -> SystemPrompt {
    let mode = match section.mode {
        PromptModeSection::Prepend => PromptMode::Prepend,
        PromptModeSection::Replace => PromptMode::Replace,
    };
    SystemPrompt {
        mode,
        text: section.text.clone(),
    }
}

fn compile_guards(c: &mut Compiler, guards: &GuardsSection) -> Guards {
    let mut detectors = Vec::new();
    for name in guards.pii.keys() {
        if !BUILTIN_DETECTORS.contains(&name.as_str()) {
            c.error(
                format!("ai.guards.pii.{name}"),
                format!(
                    "unknown detector; built-in ones are {}",
                    BUILTIN_DETECTORS.join(", ")
                ),
            );
        }
    }
    // Built-ins run in their fixed order (more specific first), then custom detectors.
    for name in BUILTIN_DETECTORS {
        if let (Some(action), Some((regex, validate))) = (guards.pii.get(*name), builtin(name)) {
            let replacement = format!("[{}]", name.to_ascii_uppercase());
            detectors.push(Detector {
                name: name.to_string(),
                regex,
                validate,
                action: pii_action(*action),
                replacement,
            });
        }
    }
    for (i, custom) in guards.custom_pii.iter().enumerate() {
        match Regex::new(&custom.regex) {
            Ok(regex) => detectors.push(Detector {
                name: custom.name.clone(),
                regex,
                validate: None,
                action: pii_action(custom.action),
                replacement: format!("[{}]", custom.name.to_ascii_uppercase()),
            }),
            Err(e) => c.error(
                format!("ai.guards.custom_pii[{i}].regex"),
                format!("invalid regex: {e}"),
            ),
        }
    }
    let deny = compile_regexes(c, &guards.deny_patterns, "ai.guards.deny_patterns");
    let tools = guards.tools.as_ref().map(|t| ToolPolicy {
        allow: t.allow.clone(),
        on_violation: match t.on_violation {
            ToolViolationSection::Reject => ToolViolation::Reject,
            ToolViolationSection::Strip => ToolViolation::Strip,
        },
    });
    Guards {
        detectors,
        deny,
        tools,
        system_prompt: guards.system_prompt.as_ref().map(system_prompt),
    }
}

fn compile_provider(c: &mut Compiler, section: &ProviderSection, path: &str) -> Option<Provider> {
    let errors_before = c.errors.len();
    let timeouts = AiTimeouts {
        connect: section
            .timeouts
            .connect
            .map_or(cluster::PROVIDER.connect, |d| d.0),
        first_byte: section
            .timeouts
            .first_byte
            .map_or(cluster::PROVIDER.read, |d| d.0),
        total: section.timeouts.total.or_secs(600),
    };
    let mock = MockSettings {
        chunks: section.mock.chunks.unwrap_or(4).max(1),
        chunk_delay: section.mock.chunk_delay.map_or(Duration::ZERO, |d| d.0),
    };
    let mut headers = Vec::new();
    for (name, value) in &section.headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            // The gateway frames the request itself: a framing header here would contradict the body.
            (Ok(name), Ok(_))
                if [
                    http::header::CONTENT_LENGTH,
                    http::header::TRANSFER_ENCODING,
                    http::header::CONNECTION,
                ]
                .contains(&name) =>
            {
                c.error(
                    format!("{path}.headers.{name}"),
                    "the gateway sets the request's framing itself; remove this header",
                )
            }
            (Ok(name), Ok(value)) => headers.push((name, value)),
            _ => c.error(
                format!("{path}.headers.{name}"),
                "not a valid header name and value",
            ),
        }
    }
    let cooldown = section
        .circuit_breaker
        .cooldown
        .map_or(cluster::PROVIDER.cooldown, |d| d.0);
    let header = name_header(c, format!("{path}.name"), &section.name);
    if section.kind == ProviderKindSection::Mock {
        return (c.errors.len() == errors_before).then(|| Provider {
            name: Arc::from(section.name.as_str()),
            name_header: header,
            kind: ProviderKind::Mock,
            enabled: true,
            cluster: None,
            deployments: Vec::new(),
            headers,
            timeouts,
            mock,
            cooldown,
        });
    }
    let kind = match section.kind {
        ProviderKindSection::Openai => ProviderKind::OpenAi,
        ProviderKindSection::Anthropic => ProviderKind::Anthropic,
        ProviderKindSection::Gemini => ProviderKind::Gemini,
        ProviderKindSection::Bedrock => ProviderKind::Bedrock,
        ProviderKindSection::Mock => ProviderKind::Mock,
    };
    let region = section.region.as_deref().filter(|r| !r.is_empty());
    if kind == ProviderKind::Bedrock && region.is_none() {
        c.error(
            format!("{path}.region"),
            "a bedrock provider names its AWS region, e.g. region: us-east-1",
        );
    } else if kind != ProviderKind::Bedrock && section.region.is_some() {
        c.error(
            format!("{path}.region"),
            "only bedrock providers take a region; remove it",
        );
    }
    // Bedrock signs each request with credentials from the environment: without them it is disabled.
    let signing = match (kind, region) {
        (ProviderKind::Bedrock, Some(region)) => {
            let signing =
                crate::ai::provider::bedrock::Signing::from_environment(region).map(Arc::new);
            if signing.is_none() {
                log::warn!(
                    "AI provider `{}` is disabled: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                     (and AWS_SESSION_TOKEN for temporary credentials) to enable it",
                    section.name
                );
            }
            signing
        }
        _ => None,
    };
    let wire = crate::ai::provider::wire(kind);
    let default_base = wire.default_base_url(region);
    let base_url = section.base_url.as_ref().or(default_base.as_ref());
    // One deployment from base_url/api_key unless deployments are listed.
    let listed: Vec<(Option<&String>, Option<&String>, u32)> = if section.deployments.is_empty() {
        vec![(base_url, section.api_key.as_ref(), 1)]
    } else {
        section
            .deployments
            .iter()
            .map(|d| {
                (
                    d.base_url.as_ref().or(base_url),
                    d.api_key.as_ref().or(section.api_key.as_ref()),
                    d.weight,
                )
            })
            .collect()
    };
    let mut deployments = Vec::new();
    let mut backends = Vec::new();
    let mut tls = None;
    let mut enabled = true;
    for (j, (base_url, api_key, weight)) in listed.into_iter().enumerate() {
        let dpath = if section.deployments.is_empty() {
            path.to_string()
        } else {
            format!("{path}.deployments[{j}]")
        };
        let Some(base_url) = base_url else {
            c.error(
                format!("{dpath}.base_url"),
                "an openai provider needs a base_url, e.g. https://api.openai.com/v1",
            );
            continue;
        };
        let url = match HttpUrl::parse(base_url) {
            Ok(url) => url,
            Err(message) => {
                c.error(format!("{dpath}.base_url"), message);
                continue;
            }
        };
        if tls.is_some_and(|t| t != url.tls) {
            c.error(
                format!("{dpath}.base_url"),
                "all deployments of a provider use the same scheme",
            );
        }
        tls = Some(url.tls);
        // A key field that is present but empty means "${VAR:-}" with VAR unset: the provider is disabled.
        let mut auth = match api_key {
            Some(key) if key.is_empty() => {
                enabled = false;
                Vec::new()
            }
            Some(key) => wire.auth_headers(key).unwrap_or_else(|message| {
                c.error(format!("{dpath}.api_key"), message);
                Vec::new()
            }),
            None if kind == ProviderKind::Bedrock && signing.is_none() => {
                enabled = false;
                Vec::new()
            }
            None if kind != ProviderKind::OpenAi && kind != ProviderKind::Bedrock => {
                let variable = if kind == ProviderKind::Gemini {
                    "GEMINI_API_KEY"
                } else {
                    "ANTHROPIC_API_KEY"
                };
                c.error(
                    format!("{dpath}.api_key"),
                    format!("this provider type needs a key, e.g. api_key: ${{{variable}:-}}"),
                );
                Vec::new()
            }
            None => Vec::new(),
        };
        // The provider's `headers:` win over the type's own (a newer `anthropic-version`): each is sent once.
        auth.retain(|(name, _)| !headers.iter().any(|(configured, _)| configured == name));
        let Ok(host_value) = HeaderValue::from_str(&url.authority()) else {
            c.error(
                format!("{dpath}.base_url"),
                "the host is not a valid header value",
            );
            continue;
        };
        let address = if url.host.contains(':') {
            format!("[{}]:{}", url.host, url.port)
        } else {
            format!("{}:{}", url.host, url.port)
        };
        backends.push(BackendInput {
            address,
            weight,
            path: dpath.clone(),
        });
        deployments.push(Deployment {
            // The API prefix, e.g. `/v1`; a query in a base URL is not meaningful and is dropped.
            base_path: url
                .path_and_query
                .split('?')
                .next()
                .unwrap_or("")
                .trim_end_matches('/')
                .to_string(),
            auth,
            host: host_value,
            signing: signing.clone(),
        });
    }
    if !enabled && kind != ProviderKind::Bedrock {
        let mut unset = c.config.unset_variables_at(&format!("{path}.api_key"));
        for j in 0..section.deployments.len() {
            unset.extend(
                c.config
                    .unset_variables_at(&format!("{path}.deployments[{j}].api_key")),
            );
        }
        let fix = if unset.is_empty() {
            format!("give {path}.api_key a value")
        } else {
            format!("set {}", unset.join(" and "))
        };
        log::warn!(
            "AI provider `{}` is disabled: its API key is empty; {fix} to enable it",
            section.name
        );
    }
    let name = format!("ai:{}", section.name);
    let tls = (tls == Some(true)).then_some(UpstreamTls {
        sni: None,
        verify: true,
        ca: None,
    });
    if c.errors.len() > errors_before {
        // A deployment is unusable: reported above, without a cascade about the cluster it would be in.
        return None;
    }
    let built = cluster::compile_cluster(
        c,
        ClusterInput {
            name: &name,
            path,
            backends,
            consistent_hash: false,
            hash_on: None,
            tls,
            health_check: section.health_check.as_ref(),
            // The check path is under the deployment's base URL (the first deployment's prefix).
            health_path_prefix: deployments.first().map_or("", |d| d.base_path.as_str()),
            passive: &section.circuit_breaker,
            retries: None,
            connect: section.timeouts.connect,
            read: section.timeouts.first_byte,
            idle: None,
            dns_refresh: None,
            defaults: &cluster::PROVIDER,
        },
    );
    if c.errors.len() > errors_before {
        return None;
    }
    let cluster = built?;
    if !enabled {
        // Not checked and not used: it is not reported healthy either.
        for backend in &cluster.backends {
            backend.health_gauge.set(0);
        }
    }
    Some(Provider {
        name: Arc::from(section.name.as_str()),
        name_header: header,
        kind,
        enabled,
        cluster: Some(Arc::new(cluster)),
        deployments,
        headers,
        timeouts,
        mock,
        cooldown,
    })
}
