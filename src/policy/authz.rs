//! Rules per proxy, compiled once into a path trie (SPEC "Config": `[[proxies.rules]]`).
//!
//! A request is decided by one walk of the trie, whatever the number of rules:
//! - each trie node stands for a pattern prefix; its children are keyed by literal segment
//!   (a hash map), plus one `*` child (exactly one non-empty segment); rules whose pattern ends
//!   at a node sit in its `here` groups, rules whose pattern ends in `/**` in its `rest` groups
//!   (zero or more further segments, so `/v1/**` matches `/v1`, `/v1/` and `/v1/a/b`);
//! - each node keeps, per mode (enforce/report) and per effect, the lowest rule index for each
//!   method bit among the rules with no caller or condition limit, the same per agent and per
//!   role (hash maps), and a short index-ordered list of the rules that carry `query`/`header`
//!   conditions (evaluated one by one, and only while they can still lower the answer);
//! - the walk visits each trie node at most once, so it costs O(path segments × branching)
//!   plus one hash look-up per caller role at each matching node.
//!
//! Semantics, fixed here and documented for users:
//! - precedence: a matching `deny` beats `approve`, which beats `allow`; no match falls to the
//!   proxy's default effect; the reported `rule` is the lowest index (config order) among the
//!   matching rules of the winning effect;
//! - `agents` and `roles`: the rule applies to the listed agents and to every agent holding one
//!   of the listed roles (the union); with neither, to every caller;
//! - patterns are canonical absolute paths (the form [`crate::http::canon`] produces): no `.`/`..`,
//!   no empty segments, no escape that canonicalisation would decode or refuse; `*` and `**`
//!   are whole segments and `**` is last. A trailing `/` is significant: `/v1/accounts` and
//!   `/v1/accounts/` are different paths (the canonical form keeps the slash), `*` never
//!   matches the empty segment a trailing slash leaves, and `/v1/accounts/**` covers both;
//! - `query`: each condition names a parameter that must be present; names and values are
//!   compared after decoding `%XX` and `+`; values may use `*` globs. A parameter sent more than
//!   once is read fail-closed: for `allow`/`approve` rules every occurrence must match, for
//!   `deny` rules one matching occurrence is enough (an upstream may read either copy);
//! - `header`: names are case-insensitive; the value the gateway passes (exact bytes) must
//!   match the exact string or `*` glob; an absent header does not match;
//! - `mode = "report"` rules never change the decision. [`Decision::report_hits`] lists, per
//!   effect, the first matching report rule whose effect would have changed the outcome had
//!   it been enforced (at most one per effect, so the cost stays flat).
use crate::http::{hop, query};
use crate::mcp::glob::Glob as NameGlob;
use crate::mcp::jsonrpc::Target;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// What a rule (or the default) decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
    Approve,
}

impl Effect {
    /// The lower-case name used in config, audit records and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
            Effect::Approve => "approve",
        }
    }

    /// Precedence rank: deny > approve > allow.
    const fn rank(self) -> usize {
        match self {
            Effect::Allow => 0,
            Effect::Approve => 1,
            Effect::Deny => 2,
        }
    }

    const BY_RANK: [Effect; 3] = [Effect::Allow, Effect::Approve, Effect::Deny];
}

/// `methods = [...]`, or one string: a method, `"read"` (GET, HEAD, OPTIONS), `"*"` or `"any"`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum MethodsSpec {
    One(String),
    List(Vec<String>),
}

/// One `[[proxies.rules]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub effect: String,
    pub methods: MethodsSpec,
    pub path: String,
    #[serde(default)]
    pub agents: Option<Vec<String>>,
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    #[serde(default)]
    pub query: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub header: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    /// `approve` rules: how long the call is held waiting for a decision (compiled by the
    /// config layer, with `[approvals]`).
    #[serde(default)]
    pub hold: Option<String>,
    /// `approve` rules: how long an approval lives (pending, or approved and unused).
    #[serde(default)]
    pub ttl: Option<String>,
    /// MCP matchers (`protocol = "mcp"` proxies): a rule with any of them decides JSON-RPC
    /// messages, not HTTP requests. Globs on the JSON-RPC method.
    #[serde(default)]
    pub mcp_methods: Option<Vec<String>>,
    /// Globs on the tool name of a `tools/call`.
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    /// Tags of the called tool (`[[proxies.tools]] tags`): any one matches.
    #[serde(default)]
    pub tool_tags: Option<Vec<String>>,
    /// Globs on the URI of `resources/read` (and subscribe/unsubscribe).
    #[serde(default)]
    pub resources: Option<Vec<String>>,
    /// Globs on the prompt name of `prompts/get`.
    #[serde(default)]
    pub prompts: Option<Vec<String>>,
}

/// One JSON-RPC message of an MCP call, as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct McpCall<'a> {
    /// The JSON-RPC method (`tools/call`, `initialize`, ...).
    pub method: &'a str,
    pub target: &'a Target,
    /// The tags of the called tool (empty for anything but `tools/call`).
    pub tags: &'a [Box<str>],
}

/// A rule's MCP matchers; an empty list is "any".
#[derive(Debug)]
struct McpMatch {
    methods: Vec<NameGlob>,
    tools: Vec<NameGlob>,
    tool_tags: Vec<Box<str>>,
    resources: Vec<NameGlob>,
    prompts: Vec<NameGlob>,
}

impl McpMatch {
    fn matches(&self, call: &McpCall<'_>) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|g| g.matches(call.method)) {
            return false;
        }
        let any = |globs: &[NameGlob], name: &str| globs.iter().any(|g| g.matches(name));
        if !self.tools.is_empty() || !self.tool_tags.is_empty() {
            let Target::Tool(name) = call.target else {
                return false;
            };
            if !self.tools.is_empty() && !any(&self.tools, name) {
                return false;
            }
            if !self.tool_tags.is_empty() && !call.tags.iter().any(|t| self.tool_tags.contains(t)) {
                return false;
            }
        }
        if !self.resources.is_empty() {
            let Target::Resource(uri) = call.target else {
                return false;
            };
            if !any(&self.resources, uri) {
                return false;
            }
        }
        if !self.prompts.is_empty() {
            let Target::Prompt(name) = call.target else {
                return false;
            };
            if !any(&self.prompts, name) {
                return false;
            }
        }
        true
    }
}

impl From<Effect> for crate::observe::audit::Decision {
    fn from(e: Effect) -> Self {
        match e {
            Effect::Allow => crate::observe::audit::Decision::Allow,
            Effect::Deny => crate::observe::audit::Decision::Deny,
            Effect::Approve => crate::observe::audit::Decision::Approve,
        }
    }
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub effect: Effect,
    /// Index (config order) of the enforced rule that decided; `None` when the default applied.
    pub rule: Option<usize>,
    /// Report-mode rules that would have changed `effect` had they been enforced: the first
    /// matching one (config order) per effect, sorted by index.
    pub report_hits: Vec<usize>,
}

// ---------------------------------------------------------------------------------------------
// Methods

const M_GET: u8 = 1;
const M_HEAD: u8 = 1 << 1;
const M_POST: u8 = 1 << 2;
const M_PUT: u8 = 1 << 3;
const M_PATCH: u8 = 1 << 4;
const M_DELETE: u8 = 1 << 5;
const M_OPTIONS: u8 = 1 << 6;
/// Any other request method (only `*`/`any` rules cover it).
const M_OTHER: u8 = 1 << 7;
const M_ALL: u8 = 0xff;
const M_READ: u8 = M_GET | M_HEAD | M_OPTIONS;

const METHOD_NAMES: &str =
    "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE, \"read\", \"*\" or \"any\"";

fn method_bit_of_name(name: &str) -> Option<u8> {
    let up = name.to_ascii_uppercase();
    Some(match up.as_str() {
        "GET" => M_GET,
        "HEAD" => M_HEAD,
        "POST" => M_POST,
        "PUT" => M_PUT,
        "PATCH" => M_PATCH,
        "DELETE" => M_DELETE,
        "OPTIONS" => M_OPTIONS,
        // TRACE echoes the request, injected credential included: only a rule that names it
        // allows it (`*` and the default do not; see `RuleSet::decide`)
        "TRACE" => M_OTHER,
        "READ" => M_READ,
        "*" | "ANY" => M_ALL,
        _ => return None,
    })
}

/// The bit of a request method (exact, case-sensitive bytes as on the wire).
fn request_method_bit(method: &[u8]) -> u8 {
    match method {
        b"GET" => M_GET,
        b"HEAD" => M_HEAD,
        b"POST" => M_POST,
        b"PUT" => M_PUT,
        b"PATCH" => M_PATCH,
        b"DELETE" => M_DELETE,
        b"OPTIONS" => M_OPTIONS,
        _ => M_OTHER,
    }
}

#[inline]
fn bit_index(bit: u8) -> usize {
    bit.trailing_zeros() as usize
}

// ---------------------------------------------------------------------------------------------
// Globs (`*` = any run of bytes, everything else literal)

#[derive(Debug, Clone, PartialEq, Eq)]
enum Glob {
    Exact(Box<[u8]>),
    /// Literal pieces between `*`s; the first must be a prefix, the last a suffix.
    Pieces(Box<[Box<[u8]>]>),
}

impl Glob {
    fn new(s: &str) -> Glob {
        if !s.contains('*') {
            return Glob::Exact(s.as_bytes().into());
        }
        Glob::Pieces(s.split('*').map(|p| p.as_bytes().into()).collect())
    }

    fn matches(&self, v: &[u8]) -> bool {
        match self {
            Glob::Exact(e) => **e == *v,
            Glob::Pieces(p) => {
                let (Some(first), Some(last)) = (p.first(), p.last()) else {
                    return true;
                };
                if v.len() < first.len() + last.len() && p.len() >= 2 {
                    return false;
                }
                if !v.starts_with(first) || !v.ends_with(last) {
                    return false;
                }
                // Middle pieces, leftmost each: greedy is exact for `*`-only globs.
                let mut rest = &v[first.len()..v.len() - last.len()];
                for mid in &p[1..p.len() - 1] {
                    if mid.is_empty() {
                        continue;
                    }
                    match memchr::memmem::find(rest, mid) {
                        Some(i) => rest = &rest[i + mid.len()..],
                        None => return false,
                    }
                }
                true
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Query parsing

fn parse_query(q: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    query::pairs(q)
        .map(|(k, v)| (query::form_decode(k), query::form_decode(v)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Compiled rules

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Enforce,
    Report,
}

#[derive(Debug)]
struct Rule {
    effect: Effect,
    mode: Mode,
    methods: u8,
    /// The rule names TRACE explicitly.
    names_trace: bool,
    agents: Option<HashSet<Box<str>>>,
    roles: Option<HashSet<Box<str>>>,
    query: Vec<(Box<[u8]>, Glob)>,
    /// Lower-case header names.
    header: Vec<(Box<str>, Glob)>,
    /// MCP matchers: the rule decides JSON-RPC messages of MCP proxies, never HTTP requests.
    mcp: Option<Box<McpMatch>>,
}

impl Rule {
    fn principal_ok(&self, agent: Option<&str>, roles: &[&str]) -> bool {
        if self.agents.is_none() && self.roles.is_none() {
            return true;
        }
        let by_agent = match (&self.agents, agent) {
            (Some(a), Some(id)) => a.contains(id),
            _ => false,
        };
        let by_role = match &self.roles {
            Some(r) => roles.iter().any(|x| r.contains(*x)),
            None => false,
        };
        by_agent || by_role
    }

    fn conditions_ok<'h>(
        &self,
        query: &mut QueryCache<'_>,
        header: &impl Fn(&str) -> Option<&'h [u8]>,
    ) -> bool {
        for (name, glob) in &self.header {
            match header(name) {
                Some(v) if glob.matches(v) => {}
                _ => return false,
            }
        }
        if !self.query.is_empty() {
            let params = query.get();
            for (name, glob) in &self.query {
                let mut seen = false;
                let mut all = true;
                let mut any = false;
                for (k, v) in params {
                    if **k == **name {
                        seen = true;
                        if glob.matches(v) {
                            any = true;
                        } else {
                            all = false;
                        }
                    }
                }
                let ok = if self.effect == Effect::Deny {
                    any
                } else {
                    seen && all
                };
                if !ok {
                    return false;
                }
            }
        }
        true
    }
}

struct QueryCache<'q> {
    raw: &'q [u8],
    parsed: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl QueryCache<'_> {
    fn get(&mut self) -> &[(Vec<u8>, Vec<u8>)] {
        let raw = self.raw;
        self.parsed.get_or_insert_with(|| parse_query(raw))
    }
}

const NONE: u32 = u32::MAX;
type PerMethod = [u32; 8];

/// Rules of one effect and one mode ending at one trie node.
#[derive(Debug, Default)]
struct Group {
    /// Lowest index per method bit among rules without agents/roles/conditions.
    open: Option<Box<PerMethod>>,
    by_agent: HashMap<Box<str>, PerMethod>,
    by_role: HashMap<Box<str>, PerMethod>,
    /// Rules with query/header conditions or MCP matchers, in index order.
    conditional: Vec<u32>,
}

fn lower(slot: &mut PerMethod, methods: u8, idx: u32) {
    for (b, s) in slot.iter_mut().enumerate() {
        if methods & (1 << b) != 0 && idx < *s {
            *s = idx;
        }
    }
}

impl Group {
    fn add(&mut self, idx: u32, r: &Rule) {
        if !r.query.is_empty() || !r.header.is_empty() || r.mcp.is_some() {
            self.conditional.push(idx);
            return;
        }
        match (&r.agents, &r.roles) {
            (None, None) => lower(
                self.open.get_or_insert_with(|| Box::new([NONE; 8])),
                r.methods,
                idx,
            ),
            (agents, roles) => {
                for a in agents.iter().flatten() {
                    lower(
                        self.by_agent.entry(a.clone()).or_insert([NONE; 8]),
                        r.methods,
                        idx,
                    );
                }
                for x in roles.iter().flatten() {
                    lower(
                        self.by_role.entry(x.clone()).or_insert([NONE; 8]),
                        r.methods,
                        idx,
                    );
                }
            }
        }
    }

    /// Lowest matching rule index below `best`.
    #[allow(clippy::too_many_arguments)]
    fn best<'h>(
        &self,
        rules: &[Rule],
        mbit: usize,
        agent: Option<&str>,
        roles: &[&str],
        query: &mut QueryCache<'_>,
        header: &impl Fn(&str) -> Option<&'h [u8]>,
        mcp: Option<&McpCall<'_>>,
        mut best: u32,
    ) -> u32 {
        // The precomputed groups hold rules without MCP matchers: they decide HTTP requests
        // only. A JSON-RPC message is decided by the rules that name MCP things.
        if mcp.is_none() {
            if let Some(o) = &self.open {
                best = best.min(o[mbit]);
            }
            if let Some(a) = agent
                && let Some(m) = self.by_agent.get(a)
            {
                best = best.min(m[mbit]);
            }
            if !self.by_role.is_empty() {
                for r in roles {
                    if let Some(m) = self.by_role.get(*r) {
                        best = best.min(m[mbit]);
                    }
                }
            }
        }
        for &i in &self.conditional {
            if i >= best {
                break;
            }
            let Some(r) = rules.get(i as usize) else {
                break;
            };
            let mcp_ok = match (&r.mcp, mcp) {
                (None, None) => true,
                (Some(m), Some(call)) => m.matches(call),
                _ => false,
            };
            if mcp_ok
                && r.methods & (1 << mbit) != 0
                && r.principal_ok(agent, roles)
                && r.conditions_ok(query, header)
            {
                best = i;
                break;
            }
        }
        best
    }
}

/// Groups of one node: `[mode][effect rank]`.
type GroupSet = [[Group; 3]; 2];

#[derive(Debug, Default)]
struct Node {
    lit: HashMap<Box<str>, u32>,
    star: Option<u32>,
    here: Option<Box<GroupSet>>,
    rest: Option<Box<GroupSet>>,
}

/// The compiled rules of one proxy.
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    nodes: Vec<Node>,
    default_effect: Effect,
}

type CompileErrors = Vec<(String, String)>;

#[derive(Clone, Copy)]
enum Seg<'a> {
    Lit(&'a str),
    Star,
    Rest,
}

/// Whether every path `b` matches is matched by `a` (conservative: `false` when unsure).
fn pattern_covers(a: &[Seg<'_>], b: &[Seg<'_>]) -> bool {
    // a segment of `a` covers one of `b`: the same literal, or `*` over a non-empty literal or `*`
    let seg = |x: &Seg<'_>, y: &Seg<'_>| match (x, y) {
        (Seg::Lit(p), Seg::Lit(q)) => p == q,
        (Seg::Star, Seg::Lit(q)) => !q.is_empty(),
        (Seg::Star, Seg::Star) => true,
        _ => false,
    };
    match a.split_last() {
        // `a` = prefix/**: `b`'s fixed part must start with the whole prefix
        Some((Seg::Rest, prefix)) => {
            let fixed = match b.split_last() {
                Some((Seg::Rest, f)) => f,
                _ => b,
            };
            fixed.len() >= prefix.len() && prefix.iter().zip(fixed).all(|(x, y)| seg(x, y))
        }
        // no `**` in `a`: `b` has none either and the same length
        _ => {
            !matches!(b.last(), Some(Seg::Rest))
                && a.len() == b.len()
                && a.iter().zip(b).all(|(x, y)| seg(x, y))
        }
    }
}

/// Whether rule `a` matches every HTTP call rule `b` matches (conservative).
fn rule_covers(a: &Rule, pa: &[Seg<'_>], b: &Rule, pb: &[Seg<'_>]) -> bool {
    let subset = |x: &Option<HashSet<Box<str>>>, y: &Option<HashSet<Box<str>>>| match y {
        None => true,
        Some(y) => x.as_ref().is_some_and(|x| y.is_subset(x)),
    };
    let principals = (a.agents.is_none() && a.roles.is_none())
        || ((b.agents.is_some() || b.roles.is_some())
            && subset(&a.agents, &b.agents)
            && subset(&a.roles, &b.roles));
    a.mode == Mode::Enforce
        && b.mode == Mode::Enforce
        && a.mcp.is_none()
        && b.mcp.is_none()
        && a.query.is_empty()
        && a.header.is_empty()
        && a.methods & b.methods == b.methods
        && (a.names_trace || !b.names_trace)
        && principals
        && pattern_covers(pa, pb)
}

/// `check` findings: rules that can never decide a call. A rule is reported when another
/// rule matches every call it matches and wins over it: a stronger effect (deny > approve >
/// allow, in any order), or the same effect earlier in the file (the reported rule is the
/// first). Conservative: conditions (`query`, `header`) on the covering rule, MCP matchers and
/// report-mode rules are never taken to cover anything. Each finding starts `rules[N]: `.
fn shadowed(rules: &[Rule], patterns: &[Vec<Seg<'_>>]) -> Vec<String> {
    let mut out = Vec::new();
    for (bi, b) in rules.iter().enumerate() {
        let cover = rules.iter().enumerate().find(|&(ai, a)| {
            ai != bi
                && (a.effect.rank() > b.effect.rank() || (a.effect == b.effect && ai < bi))
                && rule_covers(a, &patterns[ai], b, &patterns[bi])
        });
        if let Some((ai, a)) = cover {
            let why = if a.effect == b.effect {
                format!(
                    "rules[{ai}] ({}) comes first and matches every call this one matches",
                    a.effect.as_str()
                )
            } else {
                format!(
                    "rules[{ai}] ({}) matches every call this one matches, and {} wins over {}",
                    a.effect.as_str(),
                    a.effect.as_str(),
                    b.effect.as_str()
                )
            };
            out.push(format!(
                "rules[{bi}]: this {} rule can never decide a call: {why}; remove it, or narrow \
                 rules[{ai}] (methods, path, agents or roles)",
                b.effect.as_str()
            ));
        }
    }
    out
}

/// Checks a path pattern and splits it into segments.
fn parse_pattern(p: &str) -> Result<Vec<Seg<'_>>, String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?}: a path pattern must start with /"));
    }
    if p.contains(['?', '#']) {
        return Err(format!(
            "{p:?}: a path pattern holds no query or fragment (use `query = {{...}}`)"
        ));
    }
    match crate::http::canon::canonicalize(p.as_bytes()) {
        Ok(c) if c == p => {}
        Ok(c) => {
            return Err(format!(
                "{p:?} is not a canonical path (requests are matched in canonical form: {c:?}); \
                 no `.`/`..` or empty segments, escapes of unreserved characters decoded, hex in upper case"
            ));
        }
        Err(e) => return Err(format!("{p:?}: {e}")),
    }
    let body = &p[1..];
    let mut segs = Vec::new();
    let parts: Vec<&str> = body.split('/').collect();
    for (i, s) in parts.iter().enumerate() {
        match *s {
            "**" => {
                if i + 1 != parts.len() {
                    return Err(format!(
                        "{p:?}: `**` must be the last segment (a segment after it never matches)"
                    ));
                }
                segs.push(Seg::Rest);
            }
            "*" => segs.push(Seg::Star),
            s if s.contains('*') => {
                return Err(format!(
                    "{p:?}: `*` and `**` must be whole segments (`/a/*/b`, `/a/**`), not part of one"
                ));
            }
            s => segs.push(Seg::Lit(s)),
        }
    }
    Ok(segs)
}

fn compile_rule<'r>(
    i: usize,
    raw: &'r RawRule,
    errors: &mut CompileErrors,
) -> Option<(Rule, Vec<Seg<'r>>)> {
    let before = errors.len();
    let key = |f: &str| format!("rules[{i}].{f}");
    let effect = match raw.effect.as_str() {
        "allow" => Some(Effect::Allow),
        "deny" => Some(Effect::Deny),
        "approve" => Some(Effect::Approve),
        e => {
            errors.push((
                key("effect"),
                format!("unknown effect {e:?}: expected \"allow\", \"deny\" or \"approve\""),
            ));
            None
        }
    };
    let mode = match raw.mode.as_deref() {
        None | Some("enforce") => Mode::Enforce,
        Some("report") => Mode::Report,
        Some(m) => {
            errors.push((
                key("mode"),
                format!("unknown mode {m:?}: expected \"enforce\" (default) or \"report\""),
            ));
            Mode::Enforce
        }
    };
    let names: Vec<&String> = match &raw.methods {
        MethodsSpec::One(s) => vec![s],
        MethodsSpec::List(l) => l.iter().collect(),
    };
    let mut methods = 0u8;
    if names.is_empty() {
        errors.push((
            key("methods"),
            "empty list: the rule never matches (use \"*\" for every method)".into(),
        ));
    }
    for (j, m) in names.iter().enumerate() {
        match method_bit_of_name(m) {
            Some(b) => methods |= b,
            None => {
                let k = match &raw.methods {
                    MethodsSpec::One(_) => key("methods"),
                    MethodsSpec::List(_) => format!("rules[{i}].methods[{j}]"),
                };
                errors.push((k, format!("unknown method {m:?}: expected {METHOD_NAMES}")));
            }
        }
    }
    let segs = match parse_pattern(&raw.path) {
        Ok(s) => Some(s),
        Err(m) => {
            errors.push((key("path"), m));
            None
        }
    };
    let mut set = |field: &str, v: &Option<Vec<String>>| -> Option<HashSet<Box<str>>> {
        let v = v.as_ref()?;
        if v.is_empty() {
            errors.push((
                key(field),
                format!(
                    "empty list: the rule never matches (leave `{field}` out to cover every caller)"
                ),
            ));
        }
        for (j, s) in v.iter().enumerate() {
            if s.is_empty() {
                errors.push((format!("rules[{i}].{field}[{j}]"), "empty name".into()));
            }
        }
        Some(v.iter().map(|s| s.as_str().into()).collect())
    };
    let agents = set("agents", &raw.agents);
    let roles = set("roles", &raw.roles);
    let mut query = Vec::new();
    for (k, v) in raw.query.iter().flatten() {
        if k.is_empty() {
            errors.push((key("query"), "empty parameter name".into()));
        }
        query.push((
            query::form_decode(k.as_bytes()).into_boxed_slice(),
            Glob::new(v),
        ));
    }
    let mut header = Vec::new();
    for (k, v) in raw.header.iter().flatten() {
        if !hop::is_token(k.as_bytes()) {
            errors.push((
                format!("rules[{i}].header.{k}"),
                format!("{k:?} is not a valid header name"),
            ));
        }
        header.push((k.to_ascii_lowercase().into_boxed_str(), Glob::new(v)));
    }
    let mcp = compile_mcp(i, raw, errors);
    if errors.len() != before {
        return None;
    }
    let (Some(effect), Some(segs)) = (effect, segs) else {
        return None;
    };
    Some((
        Rule {
            effect,
            mode,
            methods,
            names_trace: names.iter().any(|m| m.eq_ignore_ascii_case("TRACE")),
            agents,
            roles,
            query,
            header,
            mcp,
        },
        segs,
    ))
}

/// A rule's MCP matchers, if it names any; errors as `(rules[i].field[j], message)`.
fn compile_mcp(i: usize, raw: &RawRule, errors: &mut CompileErrors) -> Option<Box<McpMatch>> {
    let mut globs = |field: &str, v: &Option<Vec<String>>| -> Vec<NameGlob> {
        let Some(v) = v else {
            return Vec::new();
        };
        if v.is_empty() {
            errors.push((
                format!("rules[{i}].{field}"),
                format!("empty list: the rule never matches (leave `{field}` out instead)"),
            ));
        }
        let mut out = Vec::with_capacity(v.len());
        for (j, s) in v.iter().enumerate() {
            match NameGlob::new(s) {
                Ok(g) => out.push(g),
                Err(m) => errors.push((format!("rules[{i}].{field}[{j}]"), m)),
            }
        }
        out
    };
    let methods = globs("mcp_methods", &raw.mcp_methods);
    let tools = globs("tools", &raw.tools);
    let resources = globs("resources", &raw.resources);
    let prompts = globs("prompts", &raw.prompts);
    let mut tool_tags: Vec<Box<str>> = Vec::new();
    if let Some(v) = &raw.tool_tags {
        if v.is_empty() {
            errors.push((
                format!("rules[{i}].tool_tags"),
                "empty list: the rule never matches (leave `tool_tags` out instead)".into(),
            ));
        }
        for (j, t) in v.iter().enumerate() {
            if t.is_empty() {
                errors.push((format!("rules[{i}].tool_tags[{j}]"), "empty tag".into()));
            }
            tool_tags.push(t.as_str().into());
        }
    }
    let named = [
        raw.mcp_methods.is_some(),
        raw.tools.is_some() || raw.tool_tags.is_some(),
        raw.resources.is_some(),
        raw.prompts.is_some(),
    ];
    if !named.iter().any(|x| *x) {
        return None;
    }
    // a message has one target: a rule naming two kinds of target can never match
    if named[1..].iter().filter(|x| **x).count() > 1 {
        errors.push((
            format!("rules[{i}]"),
            "names more than one of tools/tool_tags, resources and prompts: a message has one \
             target, so the rule could never match; write one rule per kind"
                .into(),
        ));
    }
    Some(Box::new(McpMatch {
        methods,
        tools,
        tool_tags,
        resources,
        prompts,
    }))
}

impl RuleSet {
    /// Compiles the rules of one proxy. Errors are `(key, message)` with keys such as
    /// `rules[2].path`, relative to the proxy; warnings are complete sentences.
    pub fn compile(
        rules: &[RawRule],
        default_effect: Effect,
    ) -> Result<(RuleSet, Vec<String>), CompileErrors> {
        let mut errors = CompileErrors::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut set = RuleSet {
            rules: Vec::with_capacity(rules.len()),
            nodes: vec![Node::default()],
            default_effect,
        };
        if u32::try_from(rules.len()).is_err() {
            return Err(vec![("rules".into(), "too many rules".into())]);
        }
        let mut patterns: Vec<Vec<Seg<'_>>> = Vec::with_capacity(rules.len());
        for (i, raw) in rules.iter().enumerate() {
            if let Some(n) = &raw.name {
                if n.is_empty() {
                    errors.push((format!("rules[{i}].name"), "empty rule name".into()));
                } else if let Some(&first) = names.get(n.as_str()) {
                    errors.push((
                        format!("rules[{i}].name"),
                        format!("duplicate rule name {n:?} (first used by rules[{first}])"),
                    ));
                } else {
                    names.insert(n, i);
                }
            }
            let Some((rule, segs)) = compile_rule(i, raw, &mut errors) else {
                continue;
            };
            if !errors.is_empty() {
                continue;
            }
            set.insert(i as u32, &rule, &segs);
            set.rules.push(rule);
            patterns.push(segs);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut warnings = shadowed(&set.rules, &patterns);
        if default_effect == Effect::Deny
            && !set
                .rules
                .iter()
                .any(|r| r.effect == Effect::Allow && r.mode == Mode::Enforce)
        {
            warnings.push(
                "no allow rule: every call will be refused (default_effect is deny)".to_string(),
            );
        }
        Ok((set, warnings))
    }

    fn insert(&mut self, idx: u32, rule: &Rule, segs: &[Seg<'_>]) {
        let mut node = 0usize;
        let mut rest = false;
        for s in segs {
            let next = match *s {
                Seg::Rest => {
                    rest = true;
                    break;
                }
                Seg::Star => self.nodes[node].star,
                Seg::Lit(l) => self.nodes[node].lit.get(l).copied(),
            };
            node = match next {
                Some(n) => n as usize,
                None => {
                    let n = self.nodes.len();
                    self.nodes.push(Node::default());
                    match *s {
                        Seg::Star => self.nodes[node].star = Some(n as u32),
                        Seg::Lit(l) => {
                            self.nodes[node].lit.insert(l.into(), n as u32);
                        }
                        Seg::Rest => {}
                    }
                    n
                }
            };
        }
        let n = &mut self.nodes[node];
        let slot = if rest { &mut n.rest } else { &mut n.here };
        let gs = slot.get_or_insert_with(Default::default);
        let m = match rule.mode {
            Mode::Enforce => 0,
            Mode::Report => 1,
        };
        gs[m][rule.effect.rank()].add(idx, rule);
    }

    /// The default effect this set falls back to.
    pub fn default_effect(&self) -> Effect {
        self.default_effect
    }

    /// The rule (index and effect) of `d.report_hits` that would have decided had the
    /// report-mode rules been enforced: the one with the strongest effect (deny > approve >
    /// allow), as enforcement picks.
    pub fn shadow(&self, d: &Decision) -> Option<(usize, Effect)> {
        d.report_hits
            .iter()
            .filter_map(|&i| self.rules.get(i).map(|r| (i, r.effect)))
            .max_by_key(|(i, e)| (e.rank(), std::cmp::Reverse(*i)))
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Decides one request. `path` is the canonical path relative to the proxy (`/v1/x`),
    /// `query` the raw query string without `?`, `header` looks up a request header by its
    /// lower-case name.
    pub fn decide<'h>(
        &self,
        method: &[u8],
        path: &str,
        agent: Option<&str>,
        roles: &[&str],
        query: &[u8],
        header: impl Fn(&str) -> Option<&'h [u8]>,
    ) -> Decision {
        let d = self.run(
            method,
            path,
            agent,
            roles,
            query,
            &header,
            None,
            self.default_effect,
        );
        // TRACE reflects the request (the injected credential with it) back to the agent:
        // allowed only by a rule that names it, never by `*`/`any` or the default
        if d.effect == Effect::Allow
            && method == b"TRACE"
            && !d
                .rule
                .and_then(|i| self.rules.get(i))
                .is_some_and(|r| r.names_trace)
        {
            return Decision {
                effect: Effect::Deny,
                rule: None,
                report_hits: d.report_hits,
            };
        }
        d
    }

    /// Decides one JSON-RPC message of a call to an MCP proxy (`protocol = "mcp"`), with the
    /// HTTP request's method, path, caller and conditions: only rules with MCP matchers take
    /// part, with the same precedence (deny > approve > allow). When none matches, the
    /// decision is deny with `rule: None`: a `tools/call`, `resources/read` or `prompts/get`
    /// needs a rule naming it, while the caller admits session housekeeping (a message with no
    /// target) by the HTTP decision instead.
    #[allow(clippy::too_many_arguments)]
    pub fn decide_mcp<'h>(
        &self,
        method: &[u8],
        path: &str,
        agent: Option<&str>,
        roles: &[&str],
        query: &[u8],
        header: impl Fn(&str) -> Option<&'h [u8]>,
        call: &McpCall<'_>,
    ) -> Decision {
        self.run(
            method,
            path,
            agent,
            roles,
            query,
            &header,
            Some(call),
            Effect::Deny,
        )
    }

    /// Whether any rule has MCP matchers (they need `protocol = "mcp"`).
    pub fn has_mcp_rules(&self) -> bool {
        self.rules.iter().any(|r| r.mcp.is_some())
    }

    #[allow(clippy::too_many_arguments)]
    fn run<'h>(
        &self,
        method: &[u8],
        path: &str,
        agent: Option<&str>,
        roles: &[&str],
        query: &[u8],
        header: &impl Fn(&str) -> Option<&'h [u8]>,
        mcp: Option<&McpCall<'_>>,
        default_effect: Effect,
    ) -> Decision {
        let mut w = Walk {
            set: self,
            mbit: bit_index(request_method_bit(method)),
            agent,
            roles,
            query: QueryCache {
                raw: query,
                parsed: None,
            },
            header,
            mcp,
            best: [[NONE; 3]; 2],
        };
        let rel = path.strip_prefix('/').unwrap_or(path);
        w.walk(0, rel);
        decision_from(default_effect, &w.best)
    }
}

/// Turns the lowest matching index per `[mode][effect rank]` into a decision.
fn decision_from(default: Effect, best: &[[u32; 3]; 2]) -> Decision {
    let pick = |b: &[u32; 3]| -> Option<(Effect, u32)> {
        (0..3)
            .rev()
            .find(|&r| b[r] != NONE)
            .map(|r| (Effect::BY_RANK[r], b[r]))
    };
    let (effect, rule) = match pick(&best[0]) {
        Some((e, i)) => (e, Some(i as usize)),
        None => (default, None),
    };
    let mut report_hits = Vec::new();
    for (r, &i) in best[1].iter().enumerate() {
        if i == NONE {
            continue;
        }
        let e = Effect::BY_RANK[r];
        let changes = if rule.is_some() {
            e.rank() > effect.rank()
        } else {
            e != effect
        };
        if changes {
            report_hits.push(i as usize);
        }
    }
    report_hits.sort_unstable();
    Decision {
        effect,
        rule,
        report_hits,
    }
}

struct Walk<'a, 'q, H> {
    set: &'a RuleSet,
    mbit: usize,
    agent: Option<&'a str>,
    roles: &'a [&'a str],
    query: QueryCache<'q>,
    header: &'a H,
    mcp: Option<&'a McpCall<'a>>,
    best: [[u32; 3]; 2],
}

impl<'h, H: Fn(&str) -> Option<&'h [u8]>> Walk<'_, '_, H> {
    /// Visits `node` with `rest` (the path after it, without its leading `/`) still to match.
    /// Recursion depth is bounded by the trie depth (the longest pattern), not the path.
    fn walk(&mut self, node: u32, rest: &str) {
        let set = self.set;
        let Some(n) = set.nodes.get(node as usize) else {
            return;
        };
        if let Some(gs) = &n.rest {
            self.collect(gs);
        }
        // `rest` is "" only after the last segment has been consumed: the path "/" is the one
        // empty segment, handled by splitting below.
        let (seg, tail) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let step = |w: &mut Self, child: u32| match tail {
            Some(t) => w.walk(child, t),
            None => w.finish(child),
        };
        if let Some(&c) = n.lit.get(seg) {
            step(self, c);
        }
        if let Some(c) = n.star
            && !seg.is_empty()
        {
            step(self, c);
        }
    }

    /// `node` matched the whole path.
    fn finish(&mut self, node: u32) {
        let set = self.set;
        let Some(n) = set.nodes.get(node as usize) else {
            return;
        };
        if let Some(gs) = &n.here {
            self.collect(gs);
        }
        if let Some(gs) = &n.rest {
            self.collect(gs);
        }
    }

    fn collect(&mut self, gs: &GroupSet) {
        for (m, groups) in gs.iter().enumerate() {
            for (e, g) in groups.iter().enumerate() {
                self.best[m][e] = g.best(
                    &self.set.rules,
                    self.mbit,
                    self.agent,
                    self.roles,
                    &mut self.query,
                    self.header,
                    self.mcp,
                    self.best[m][e],
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_cover_table() {
        let p = |x: &'static str| parse_pattern(x).unwrap();
        for (a, b, want) in [
            ("/**", "/", true),
            ("/**", "/v1/x/**", true),
            ("/v1/**", "/v1", true),
            ("/v1/**", "/v1/**", true),
            ("/v1/**", "/v1/*/x", true),
            ("/v1/**", "/v2/x", false),
            ("/v1/x/**", "/v1/**", false),
            ("/v1/*", "/v1/x", true),
            ("/v1/*", "/v1/*", true),
            ("/v1/*", "/v1/", false),
            ("/v1/*", "/v1/**", false),
            ("/v1/*", "/v1", false),
            ("/v1/x", "/v1/*", false),
            ("/v1/x", "/v1/x", true),
            ("/v1/x", "/v1/x/", false),
            ("/*/**", "/", false),
            ("/*/**", "/a", true),
        ] {
            assert_eq!(pattern_covers(&p(a), &p(b)), want, "{a} covers {b}");
        }
    }
    use proptest::prelude::*;

    fn rule(effect: &str, methods: &[&str], path: &str) -> RawRule {
        RawRule {
            effect: effect.into(),
            methods: MethodsSpec::List(methods.iter().map(|s| s.to_string()).collect()),
            path: path.into(),
            agents: None,
            roles: None,
            query: None,
            header: None,
            name: None,
            mode: None,
            hold: None,
            ttl: None,
            mcp_methods: None,
            tools: None,
            tool_tags: None,
            resources: None,
            prompts: None,
        }
    }

    fn with(mut r: RawRule, f: impl FnOnce(&mut RawRule)) -> RawRule {
        f(&mut r);
        r
    }

    fn map(kv: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn strs(v: &[&str]) -> Option<Vec<String>> {
        Some(v.iter().map(|s| s.to_string()).collect())
    }

    fn mcp_rules() -> Vec<RawRule> {
        vec![
            // 0: the MCP endpoint itself (session housekeeping)
            rule("allow", &["POST", "GET", "DELETE"], "/mcp"),
            // 1: support reads
            with(rule("allow", &["POST"], "/mcp"), |r| {
                r.tools = strs(&["get_*", "search"]);
                r.roles = strs(&["support"]);
            }),
            // 2: nobody deletes
            with(rule("deny", &["POST"], "/mcp"), |r| {
                r.tools = strs(&["delete_*"])
            }),
            // 3: writes need a human
            with(rule("approve", &["POST"], "/mcp"), |r| {
                r.tool_tags = strs(&["write"]);
            }),
            // 4: reports are readable by anyone
            with(rule("allow", &["POST"], "/mcp"), |r| {
                r.resources = strs(&["file:///reports/**"]);
            }),
            // 5: prompts by name
            with(rule("allow", &["POST"], "/mcp"), |r| {
                r.prompts = strs(&["summarise"])
            }),
            // 6: no one lists prompts
            with(rule("deny", &["POST"], "/mcp"), |r| {
                r.mcp_methods = strs(&["prompts/list"])
            }),
        ]
    }

    #[test]
    fn mcp_messages_are_decided_by_the_rules_that_name_them() {
        let (set, _) = RuleSet::compile(&mcp_rules(), Effect::Deny).unwrap();
        assert!(set.has_mcp_rules());
        let h = |_: &str| None;
        let tool = |n: &str| Target::Tool(n.into());
        let write: &[Box<str>] = &["write".into()];
        // (name, roles, method, target, tags, effect, rule)
        type Row<'a> = (
            &'a str,
            &'a [&'a str],
            &'a str,
            Target,
            &'a [Box<str>],
            Effect,
            Option<usize>,
        );
        let rows: Vec<Row> = vec![
            (
                "support reads",
                &["support"],
                "tools/call",
                tool("get_account"),
                &[],
                Effect::Allow,
                Some(1),
            ),
            (
                "exact name",
                &["support"],
                "tools/call",
                tool("search"),
                &[],
                Effect::Allow,
                Some(1),
            ),
            (
                "other role",
                &["billing"],
                "tools/call",
                tool("get_account"),
                &[],
                Effect::Deny,
                None,
            ),
            (
                "delete denied even for support",
                &["support"],
                "tools/call",
                tool("delete_account"),
                &[],
                Effect::Deny,
                Some(2),
            ),
            (
                "unnamed tool",
                &["support"],
                "tools/call",
                tool("send_email"),
                &[],
                Effect::Deny,
                None,
            ),
            (
                "glob is not a prefix match",
                &["support"],
                "tools/call",
                tool("xget_account"),
                &[],
                Effect::Deny,
                None,
            ),
            (
                "tag write: approve",
                &["support"],
                "tools/call",
                tool("update_account"),
                write,
                Effect::Approve,
                Some(3),
            ),
            (
                "deny beats approve",
                &[],
                "tools/call",
                tool("delete_all"),
                write,
                Effect::Deny,
                Some(2),
            ),
            (
                "approve beats allow",
                &["support"],
                "tools/call",
                tool("get_and_set"),
                write,
                Effect::Approve,
                Some(3),
            ),
            (
                "report resource",
                &[],
                "resources/read",
                Target::Resource("file:///reports/q1.pdf".into()),
                &[],
                Effect::Allow,
                Some(4),
            ),
            (
                "other resource",
                &[],
                "resources/read",
                Target::Resource("file:///secrets/k".into()),
                &[],
                Effect::Deny,
                None,
            ),
            (
                "a tool rule never admits a resource",
                &["support"],
                "resources/read",
                Target::Resource("get_x".into()),
                &[],
                Effect::Deny,
                None,
            ),
            (
                "prompt",
                &[],
                "prompts/get",
                Target::Prompt("summarise".into()),
                &[],
                Effect::Allow,
                Some(5),
            ),
            (
                "prompt list denied",
                &[],
                "prompts/list",
                Target::None,
                &[],
                Effect::Deny,
                Some(6),
            ),
            (
                "housekeeping: no MCP rule",
                &[],
                "initialize",
                Target::None,
                &[],
                Effect::Deny,
                None,
            ),
        ];
        for (name, roles, method, target, tags, effect, rule) in rows {
            let call = McpCall {
                method,
                target: &target,
                tags,
            };
            let d = set.decide_mcp(b"POST", "/mcp", Some("bot"), roles, b"", h, &call);
            assert_eq!((d.effect, d.rule), (effect, rule), "{name}");
        }
        // HTTP requests never see the MCP rules: the endpoint rule admits the POST itself
        let d = set.decide(b"POST", "/mcp", Some("bot"), &[], b"", h);
        assert_eq!((d.effect, d.rule), (Effect::Allow, Some(0)));
        // and a GET elsewhere is the default
        assert_eq!(
            set.decide(b"GET", "/other", None, &[], b"", h).effect,
            Effect::Deny
        );
        // MCP rules keep their HTTP scope: a POST to another path is not theirs
        let call = McpCall {
            method: "tools/call",
            target: &tool("get_account"),
            tags: &[],
        };
        let d = set.decide_mcp(
            b"POST",
            "/elsewhere",
            Some("bot"),
            &["support"],
            b"",
            h,
            &call,
        );
        assert_eq!((d.effect, d.rule), (Effect::Deny, None));
    }

    #[test]
    fn mcp_rule_compile_errors() {
        let cases: Vec<(RawRule, &str)> = vec![
            (
                with(rule("allow", &["POST"], "/mcp"), |r| r.tools = strs(&[])),
                "rules[0].tools",
            ),
            (
                with(rule("allow", &["POST"], "/mcp"), |r| {
                    r.tools = strs(&["a***"])
                }),
                "rules[0].tools[0]",
            ),
            (
                with(rule("allow", &["POST"], "/mcp"), |r| r.tools = strs(&[""])),
                "rules[0].tools[0]",
            ),
            (
                with(rule("allow", &["POST"], "/mcp"), |r| {
                    r.tool_tags = strs(&[""])
                }),
                "rules[0].tool_tags[0]",
            ),
            (
                with(rule("allow", &["POST"], "/mcp"), |r| {
                    r.tools = strs(&["x"]);
                    r.resources = strs(&["file:///**"]);
                }),
                "rules[0]",
            ),
        ];
        for (r, key) in cases {
            let errs = RuleSet::compile(&[r], Effect::Deny).expect_err(key);
            assert!(errs.iter().any(|(k, _)| k == key), "{key}: {errs:?}");
        }
        let (set, _) = RuleSet::compile(&[rule("allow", &["GET"], "/**")], Effect::Deny).unwrap();
        assert!(!set.has_mcp_rules());
    }

    #[test]
    fn trace_is_allowed_only_by_a_rule_that_names_it() {
        let no_header = |_: &str| None;
        type Case<'a> = (&'a str, Vec<RawRule>, Effect, &'a [u8], Effect);
        let cases: &[Case] = &[
            (
                "allow * does not cover TRACE",
                vec![rule("allow", &["*"], "/**")],
                Effect::Deny,
                b"TRACE",
                Effect::Deny,
            ),
            (
                "allow any does not cover TRACE",
                vec![rule("allow", &["any"], "/**")],
                Effect::Deny,
                b"TRACE",
                Effect::Deny,
            ),
            (
                "default allow does not cover TRACE",
                vec![],
                Effect::Allow,
                b"TRACE",
                Effect::Deny,
            ),
            (
                "a rule naming TRACE allows it",
                vec![rule("allow", &["TRACE"], "/**")],
                Effect::Deny,
                b"TRACE",
                Effect::Allow,
            ),
            (
                "lower-case trace names it too",
                vec![rule("allow", &["trace"], "/**")],
                Effect::Deny,
                b"TRACE",
                Effect::Allow,
            ),
            (
                "GET under allow * is unchanged",
                vec![rule("allow", &["*"], "/**")],
                Effect::Deny,
                b"GET",
                Effect::Allow,
            ),
            (
                "another odd method under allow *",
                vec![rule("allow", &["*"], "/**")],
                Effect::Deny,
                b"PROPFIND",
                Effect::Allow,
            ),
        ];
        for (name, rules, default, method, want) in cases {
            let (set, _) = RuleSet::compile(rules, *default).expect(name);
            let d = set.decide(method, "/x", None, &[], b"", no_header);
            assert_eq!(d.effect, *want, "{name}");
        }
    }

    /// The rule set every table row runs against.
    fn table_rules() -> Vec<RawRule> {
        vec![
            // 0
            rule("allow", &["GET"], "/v1/accounts/**"),
            // 1
            rule("deny", &["DELETE"], "/v1/accounts/*"),
            // 2
            rule("approve", &["POST"], "/v1/payments"),
            // 3
            with(
                rule("allow", &["POST", "PUT"], "/v1/accounts/*/notes"),
                |r| r.roles = strs(&["support"]),
            ),
            // 4
            with(rule("allow", &["*"], "/v1/admin/**"), |r| {
                r.agents = strs(&["root-bot"])
            }),
            // 5
            rule("deny", &["*"], "/v1/admin/secrets/**"),
            // 6
            with(rule("allow", &["read"], "/v1/search"), |r| {
                r.query = map(&[("scope", "public"), ("q", "*")])
            }),
            // 7
            with(rule("allow", &["POST"], "/v1/upload"), |r| {
                r.header = map(&[("Content-Type", "application/json*")])
            }),
            // 8
            with(rule("deny", &["GET"], "/v1/search"), |r| {
                r.query = map(&[("debug", "true")])
            }),
            // 9
            with(rule("deny", &["GET"], "/v1/accounts/**"), |r| {
                r.mode = Some("report".into())
            }),
            // 10
            rule("allow", &["GET"], "/v1/accounts/"),
            // 11
            rule("allow", &["GET"], "/"),
            // 12
            rule("approve", &["GET"], "/v1/accounts/*/export"),
            // 13
            with(rule("allow", &["GET"], "/v2/**"), |r| {
                r.mode = Some("report".into())
            }),
            // 14
            rule("allow", &["any"], "/v3/*/x"),
        ]
    }

    #[test]
    fn decision_table() {
        let (set, warnings) = RuleSet::compile(&table_rules(), Effect::Deny).unwrap();
        // rule 10 (`/v1/accounts/`) is there to pin trailing-slash matching; rule 0 covers it
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with(
                "rules[10]: this allow rule can never decide a call: rules[0] (allow) comes first"
            ),
            "{warnings:?}"
        );
        type Row = (
            &'static str,
            &'static str,
            &'static str,
            Option<&'static str>,
            &'static [&'static str],
            &'static str,
            &'static [(&'static str, &'static str)],
            Effect,
            Option<usize>,
            &'static [usize],
        );
        use Effect::*;
        #[rustfmt::skip]
        let rows: &[Row] = &[
            ("get account", "GET", "/v1/accounts/42", None, &[], "", &[], Allow, Some(0), &[9]),
            ("** zero segments", "GET", "/v1/accounts", None, &[], "", &[], Allow, Some(0), &[9]),
            ("** deep", "GET", "/v1/accounts/42/a/b/c", None, &[], "", &[], Allow, Some(0), &[9]),
            ("trailing slash: rule 0 first", "GET", "/v1/accounts/", None, &[], "", &[], Allow, Some(0), &[9]),
            ("head not allowed by GET", "HEAD", "/v1/accounts/42", None, &[], "", &[], Deny, None, &[]),
            ("delete denied", "DELETE", "/v1/accounts/42", None, &[], "", &[], Deny, Some(1), &[]),
            ("delete deeper: * is one segment", "DELETE", "/v1/accounts/42/x", None, &[], "", &[], Deny, None, &[]),
            ("delete trailing slash: * not empty", "DELETE", "/v1/accounts/", None, &[], "", &[], Deny, None, &[]),
            ("approve payment", "POST", "/v1/payments", None, &[], "", &[], Approve, Some(2), &[]),
            ("payment subpath", "POST", "/v1/payments/1", None, &[], "", &[], Deny, None, &[]),
            ("payment GET", "GET", "/v1/payments", None, &[], "", &[], Deny, None, &[]),
            ("notes by role", "POST", "/v1/accounts/7/notes", None, &["support"], "", &[], Allow, Some(3), &[]),
            ("notes by role PUT", "PUT", "/v1/accounts/7/notes", Some("a"), &["x", "support"], "", &[], Allow, Some(3), &[]),
            ("notes without role", "POST", "/v1/accounts/7/notes", Some("a"), &["sales"], "", &[], Deny, None, &[]),
            ("notes role but PATCH", "PATCH", "/v1/accounts/7/notes", None, &["support"], "", &[], Deny, None, &[]),
            ("admin by agent", "PATCH", "/v1/admin/users/1", Some("root-bot"), &[], "", &[], Allow, Some(4), &[]),
            ("admin other method", "PROPFIND", "/v1/admin", Some("root-bot"), &[], "", &[], Allow, Some(4), &[]),
            ("admin other agent", "GET", "/v1/admin", Some("bot"), &[], "", &[], Deny, None, &[]),
            ("admin no agent", "GET", "/v1/admin", None, &["root-bot"], "", &[], Deny, None, &[]),
            ("deny beats allow", "GET", "/v1/admin/secrets/k", Some("root-bot"), &[], "", &[], Deny, Some(5), &[]),
            ("deny ** zero segs", "GET", "/v1/admin/secrets", Some("root-bot"), &[], "", &[], Deny, Some(5), &[]),
            ("query ok", "GET", "/v1/search", None, &[], "scope=public&q=x", &[], Allow, Some(6), &[]),
            ("query empty glob value", "GET", "/v1/search", None, &[], "q=&scope=public", &[], Allow, Some(6), &[]),
            ("query missing param", "GET", "/v1/search", None, &[], "scope=public", &[], Deny, None, &[]),
            ("query wrong value", "GET", "/v1/search", None, &[], "scope=private&q=x", &[], Deny, None, &[]),
            ("query decoded", "GET", "/v1/search", None, &[], "sc%6Fpe=publ%69c&q=a+b", &[], Allow, Some(6), &[]),
            ("query repeated: all must match", "GET", "/v1/search", None, &[], "scope=public&q=1&scope=private", &[], Deny, None, &[]),
            ("query repeated same", "GET", "/v1/search", None, &[], "scope=public&q=1&scope=public", &[], Allow, Some(6), &[]),
            ("read covers HEAD", "HEAD", "/v1/search", None, &[], "scope=public&q=1", &[], Allow, Some(6), &[]),
            ("read covers OPTIONS", "OPTIONS", "/v1/search", None, &[], "scope=public&q=1", &[], Allow, Some(6), &[]),
            ("read not POST", "POST", "/v1/search", None, &[], "scope=public&q=1", &[], Deny, None, &[]),
            ("deny query", "GET", "/v1/search", None, &[], "scope=public&q=1&debug=true", &[], Deny, Some(8), &[]),
            ("deny query any occurrence", "GET", "/v1/search", None, &[], "scope=public&q=1&debug=false&debug=tru%65", &[], Deny, Some(8), &[]),
            ("deny query other value", "GET", "/v1/search", None, &[], "scope=public&q=1&debug=false", &[], Allow, Some(6), &[]),
            ("header ok", "POST", "/v1/upload", None, &[], "", &[("content-type", "application/json; charset=utf-8")], Allow, Some(7), &[]),
            ("header wrong", "POST", "/v1/upload", None, &[], "", &[("content-type", "text/plain")], Deny, None, &[]),
            ("header absent", "POST", "/v1/upload", None, &[], "", &[], Deny, None, &[]),
            ("exact trailing slash rule", "GET", "/v1/accounts/", None, &[], "", &[], Allow, Some(0), &[9]),
            ("root", "GET", "/", None, &[], "", &[], Allow, Some(11), &[]),
            ("root other method", "POST", "/", None, &[], "", &[], Deny, None, &[]),
            ("approve beats allow", "GET", "/v1/accounts/9/export", None, &[], "", &[], Approve, Some(12), &[9]),
            ("report only, default deny", "GET", "/v2/x", None, &[], "", &[], Deny, None, &[13]),
            ("report ** zero segments", "GET", "/v2", None, &[], "", &[], Deny, None, &[13]),
            ("star middle", "DELETE", "/v3/abc/x", None, &[], "", &[], Allow, Some(14), &[]),
            ("star middle other method", "BREW", "/v3/abc/x", None, &[], "", &[], Allow, Some(14), &[]),
            ("star middle too deep", "GET", "/v3/a/b/x", None, &[], "", &[], Deny, None, &[]),
            ("star middle too short", "GET", "/v3/x", None, &[], "", &[], Deny, None, &[]),
            ("lowercase method is other", "get", "/v1/accounts/1", None, &[], "", &[], Deny, None, &[]),
            ("unknown path", "GET", "/nope", None, &[], "", &[], Deny, None, &[]),
            ("case-sensitive segments", "GET", "/V1/accounts/1", None, &[], "", &[], Deny, None, &[]),
        ];
        for (name, method, path, agent, roles, query, headers, eff, idx, reports) in rows {
            let h = |n: &str| {
                headers
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| v.as_bytes())
            };
            let d = set.decide(method.as_bytes(), path, *agent, roles, query.as_bytes(), h);
            assert_eq!(
                d,
                Decision {
                    effect: *eff,
                    rule: *idx,
                    report_hits: reports.to_vec()
                },
                "row {name:?}"
            );
            assert_eq!(
                d,
                naive(
                    &table_rules(),
                    Effect::Deny,
                    method.as_bytes(),
                    path,
                    *agent,
                    roles,
                    query.as_bytes(),
                    &h
                ),
                "naive, row {name:?}"
            );
        }
    }

    #[test]
    fn default_allow_and_report_deny() {
        let rules = vec![with(rule("deny", &["GET"], "/x/**"), |r| {
            r.mode = Some("report".into())
        })];
        let (set, w) = RuleSet::compile(&rules, Effect::Allow).unwrap();
        assert!(w.is_empty());
        let d = set.decide(b"GET", "/x/1", None, &[], b"", |_| None);
        assert_eq!(
            d,
            Decision {
                effect: Effect::Allow,
                rule: None,
                report_hits: vec![0]
            }
        );
        let d = set.decide(b"POST", "/x/1", None, &[], b"", |_| None);
        assert!(d.report_hits.is_empty());
    }

    #[test]
    fn warnings() {
        let (_, w) = RuleSet::compile(&[], Effect::Deny).unwrap();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("no allow rule"), "{w:?}");
        let (_, w) = RuleSet::compile(&[rule("deny", &["GET"], "/a")], Effect::Deny).unwrap();
        assert_eq!(w.len(), 1);
        let (_, w) = RuleSet::compile(&[], Effect::Allow).unwrap();
        assert!(w.is_empty());
        let (_, w) = RuleSet::compile(&[rule("allow", &["GET"], "/a")], Effect::Deny).unwrap();
        assert!(w.is_empty());
    }

    #[test]
    fn methods_spec_forms_deserialize() {
        #[derive(Deserialize)]
        struct P {
            rules: Vec<RawRule>,
        }
        let p: P = toml::from_str(
            r#"
            [[rules]]
            effect = "allow"
            methods = "read"
            path = "/a"
            [[rules]]
            effect = "deny"
            methods = ["GET", "post"]
            path = "/b/**"
            agents = ["x"]
            query = { a = "b*" }
            header = { "X-Y" = "z" }
            name = "n"
            mode = "report"
            "#,
        )
        .unwrap();
        assert_eq!(p.rules[0].methods, MethodsSpec::One("read".into()));
        assert_eq!(
            p.rules[1].methods,
            MethodsSpec::List(vec!["GET".into(), "post".into()])
        );
        assert!(RuleSet::compile(&p.rules, Effect::Deny).is_ok());
        let e = toml::from_str::<P>("[[rules]]\neffect='allow'\nmethods='*'\npath='/'\nbogus=1\n");
        assert!(e.is_err());
    }

    #[test]
    fn compile_error_table() {
        #[rustfmt::skip]
        let rows: Vec<(&str, Vec<RawRule>, &str, &str)> = vec![
            ("unknown effect", vec![rule("permit", &["GET"], "/a")], "rules[0].effect", "unknown effect \"permit\""),
            ("unknown method", vec![rule("allow", &["GET", "FETCH"], "/a")], "rules[0].methods[1]", "unknown method \"FETCH\""),
            ("unknown single method", vec![with(rule("allow", &[], "/a"), |r| r.methods = MethodsSpec::One("all".into()))], "rules[0].methods", "unknown method \"all\""),
            ("empty methods", vec![rule("allow", &[], "/a")], "rules[0].methods", "never matches"),
            ("relative path", vec![rule("allow", &["GET"], "a/b")], "rules[0].path", "must start with /"),
            ("dot dot", vec![rule("allow", &["GET"], "/a/../b")], "rules[0].path", "not a canonical path"),
            ("double slash", vec![rule("allow", &["GET"], "/a//b")], "rules[0].path", "not a canonical path"),
            ("encoded slash", vec![rule("allow", &["GET"], "/a%2Fb")], "rules[0].path", "encoded slash"),
            ("encoded unreserved", vec![rule("allow", &["GET"], "/%61")], "rules[0].path", "not a canonical path"),
            ("lower-case hex", vec![rule("allow", &["GET"], "/a%3ab")], "rules[0].path", "not a canonical path"),
            ("query in path", vec![rule("allow", &["GET"], "/a?b=1")], "rules[0].path", "no query"),
            ("segment after **", vec![rule("allow", &["GET"], "/a/**/b")], "rules[0].path", "must be the last segment"),
            ("partial star", vec![rule("allow", &["GET"], "/a/b*")], "rules[0].path", "whole segments"),
            ("empty agents", vec![with(rule("allow", &["GET"], "/a"), |r| r.agents = Some(vec![]))], "rules[0].agents", "never matches"),
            ("empty roles", vec![with(rule("allow", &["GET"], "/a"), |r| r.roles = Some(vec![]))], "rules[0].roles", "never matches"),
            ("empty agent name", vec![with(rule("allow", &["GET"], "/a"), |r| r.agents = strs(&[""]))], "rules[0].agents[0]", "empty name"),
            ("duplicate names", vec![with(rule("allow", &["GET"], "/a"), |r| r.name = Some("x".into())), with(rule("allow", &["GET"], "/b"), |r| r.name = Some("x".into()))], "rules[1].name", "duplicate rule name \"x\" (first used by rules[0])"),
            ("unknown mode", vec![with(rule("allow", &["GET"], "/a"), |r| r.mode = Some("shadow".into()))], "rules[0].mode", "unknown mode"),
            ("bad header name", vec![with(rule("allow", &["GET"], "/a"), |r| r.header = map(&[("X Y", "1")]))], "rules[0].header.X Y", "not a valid header name"),
            ("empty query name", vec![with(rule("allow", &["GET"], "/a"), |r| r.query = map(&[("", "1")]))], "rules[0].query", "empty parameter name"),
            ("second rule keyed", vec![rule("allow", &["GET"], "/a"), rule("allow", &["GET"], "/a/./b")], "rules[1].path", "not a canonical path"),
        ];
        for (name, rules, key, msg) in rows {
            let errs = RuleSet::compile(&rules, Effect::Deny).expect_err(name);
            assert!(
                errs.iter().any(|(k, m)| k == key && m.contains(msg)),
                "row {name:?}: {errs:?}"
            );
        }
    }

    #[test]
    fn every_error_is_reported() {
        let rules = vec![rule("x", &["GET"], "/a"), rule("allow", &["NOPE"], "a")];
        let errs = RuleSet::compile(&rules, Effect::Deny).unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn glob_matching() {
        let rows: &[(&str, &str, bool)] = &[
            ("a", "a", true),
            ("a", "ab", false),
            ("*", "", true),
            ("*", "anything", true),
            ("a*", "abc", true),
            ("a*", "ba", false),
            ("*c", "abc", true),
            ("a*c", "ac", true),
            ("a*c", "abbc", true),
            ("a*c", "a", false),
            ("a*b*c", "a1b2c", true),
            ("a*b*c", "acb", false),
            ("ab*ba", "aba", false),
            ("**", "x", true),
        ];
        for (g, v, want) in rows {
            assert_eq!(Glob::new(g).matches(v.as_bytes()), *want, "{g:?} vs {v:?}");
        }
    }

    // -----------------------------------------------------------------------------------------
    // Naive linear matcher, the oracle for the trie.

    fn pattern_matches(pattern: &str, path: &str) -> bool {
        let p: Vec<&str> = pattern[1..].split('/').collect();
        let s: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
        fn go(p: &[&str], s: &[&str]) -> bool {
            match (p.first(), s.first()) {
                (Some(&"**"), _) => true,
                (None, None) => true,
                (Some(&"*"), Some(x)) => !x.is_empty() && go(&p[1..], &s[1..]),
                (Some(a), Some(b)) => a == b && go(&p[1..], &s[1..]),
                _ => false,
            }
        }
        go(&p, &s)
    }

    #[allow(clippy::too_many_arguments)]
    fn naive<'h>(
        raws: &[RawRule],
        default: Effect,
        method: &[u8],
        path: &str,
        agent: Option<&str>,
        roles: &[&str],
        query: &[u8],
        header: &impl Fn(&str) -> Option<&'h [u8]>,
    ) -> Decision {
        let mut errs = Vec::new();
        let mut best = [[NONE; 3]; 2];
        let mbit = request_method_bit(method);
        let mut qc = QueryCache {
            raw: query,
            parsed: None,
        };
        for (i, raw) in raws.iter().enumerate() {
            let (r, _) = compile_rule(i, raw, &mut errs).unwrap();
            if r.methods & mbit != 0
                && pattern_matches(&raw.path, path)
                && r.principal_ok(agent, roles)
                && r.conditions_ok(&mut qc, header)
            {
                let m = (r.mode == Mode::Report) as usize;
                let e = r.effect.rank();
                best[m][e] = best[m][e].min(i as u32);
            }
        }
        decision_from(default, &best)
    }

    fn arb_rule() -> impl Strategy<Value = RawRule> {
        let seg = prop_oneof![
            4 => prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_string),
            2 => Just("*".to_string()),
        ];
        let path = (prop::collection::vec(seg, 0..4), any::<u8>()).prop_map(|(segs, tail)| {
            let mut p = String::new();
            for s in &segs {
                p.push('/');
                p.push_str(s);
            }
            match tail % 4 {
                0 => p.push_str("/**"),
                1 => p.push('/'),
                _ if p.is_empty() => p.push('/'),
                _ => {}
            }
            p
        });
        let methods = prop::sample::subsequence(vec!["GET", "POST", "DELETE", "read", "*"], 1..3)
            .prop_map(|v| MethodsSpec::List(v.into_iter().map(String::from).collect()));
        let who = prop::option::of(prop::sample::subsequence(vec!["u1", "u2", "u3"], 1..3));
        let cond = prop::option::of(prop::sample::select(vec!["x", "y*", "*"]));
        (
            prop::sample::select(vec!["allow", "deny", "approve"]),
            methods,
            path,
            who.clone(),
            who,
            cond.clone(),
            cond,
            any::<bool>(),
        )
            .prop_map(|(e, methods, path, agents, roles, q, h, report)| RawRule {
                effect: e.into(),
                methods,
                path,
                agents: agents.map(|v| v.into_iter().map(String::from).collect()),
                roles: roles.map(|v| v.into_iter().map(|s| format!("r{s}")).collect()),
                query: q.map(|v| BTreeMap::from([("k".to_string(), v.to_string())])),
                header: h.map(|v| BTreeMap::from([("x-h".to_string(), v.to_string())])),
                name: None,
                mode: report.then(|| "report".to_string()),
                hold: None,
                ttl: None,
                mcp_methods: None,
                tools: None,
                tool_tags: None,
                resources: None,
                prompts: None,
            })
    }

    fn arb_path() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "d"]), 0..5),
            any::<bool>(),
        )
            .prop_map(|(segs, slash)| {
                let mut p = String::new();
                for s in &segs {
                    p.push('/');
                    p.push_str(s);
                }
                if slash || p.is_empty() {
                    p.push('/');
                }
                p
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]
        #[test]
        fn trie_equals_naive(
            rules in prop::collection::vec(arb_rule(), 0..12),
            default in prop::sample::select(vec![Effect::Allow, Effect::Deny, Effect::Approve]),
            paths in prop::collection::vec(arb_path(), 1..6),
            method in prop::sample::select(vec!["GET", "POST", "DELETE", "HEAD", "OPTIONS", "PUT", "MKCOL"]),
            agent in prop::option::of(prop::sample::select(vec!["u1", "u2", "u4"])),
            roles in prop::sample::subsequence(vec!["ru1", "ru2", "ru3", "ru4"], 0..3),
            query in prop::sample::select(vec!["", "k=x", "k=yy", "k=x&k=z", "k=y&k=x", "j=x"]),
            header in prop::option::of(prop::sample::select(vec!["x", "yz", "z"])),
        ) {
            let (set, _) = RuleSet::compile(&rules, default).unwrap();
            let h = |n: &str| if n == "x-h" { header.map(str::as_bytes) } else { None };
            for p in &paths {
                let got = set.decide(method.as_bytes(), p, agent, &roles, query.as_bytes(), h);
                let want = naive(&rules, default, method.as_bytes(), p, agent, &roles, query.as_bytes(), &h);
                prop_assert_eq!(got, want, "path {}", p);
            }
        }
    }
}
