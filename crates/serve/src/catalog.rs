//! The catalog: every upstream server's tools, prompts, resources and resource
//! templates under the names clients see, and the tables that route a request
//! back to its server. Pure: built from listings, never touches a session.
//!
//! Rules (README, "roster serve"):
//! - a tool or prompt is exposed as [`names::exposed`]`(prefix, name)`;
//! - a resource URI or template with a scheme passes through unchanged; one
//!   without (rare, and not a valid URI) is exposed as `<prefix>__<uri>`;
//! - when several items want one exposed name, they are ordered by (server
//!   name, upstream name): the first keeps the name, each other gets the name cut
//!   and suffixed with a hash of its server and upstream name, so the outcome
//!   never depends on the order servers came up. Resources and templates cannot be
//!   renamed (their URIs mean something to their server), so only the first is
//!   served. Every such case is reported in [`Catalog::collisions`].

use std::collections::{BTreeMap, HashMap, HashSet};

use rmcp::model::{Prompt, Resource, ResourceTemplate, Tool};

use crate::names;

/// What one server offers, as listed from it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Listing {
    /// `tools/list`, every page.
    pub tools: Vec<Tool>,
    /// `prompts/list`, every page.
    pub prompts: Vec<Prompt>,
    /// `resources/list`, every page.
    pub resources: Vec<Resource>,
    /// `resources/templates/list`, every page.
    pub templates: Vec<ResourceTemplate>,
}

/// One server's part of the catalog.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The server's name.
    pub server: &'a str,
    /// What its exposed names start with: its `tool_prefix`, or else its name.
    pub prefix: &'a str,
    /// What it offers.
    pub listing: &'a Listing,
}

/// Where an exposed item lives upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    /// The server's name.
    pub server: String,
    /// The item's own name (tools, prompts) or URI (resources, templates) there.
    pub name: String,
}

/// The kinds of items a catalog holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Tools.
    Tool,
    /// Prompts.
    Prompt,
    /// Resources.
    Resource,
    /// Resource templates.
    Template,
}

impl Kind {
    /// The kind's name in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Prompt => "prompt",
            Kind::Resource => "resource",
            Kind::Template => "resource template",
        }
    }
}

/// Several upstream items wanted one exposed name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    /// What kind of item.
    pub kind: Kind,
    /// The exposed name (or URI) they wanted.
    pub wanted: String,
    /// The one that has it.
    pub kept: Route,
    /// The others, each with the name it got instead, or `None` when it is not
    /// served at all.
    pub others: Vec<(Route, Option<String>)>,
}

impl std::fmt::Display for Collision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} name {:?} is wanted by ", self.kind.as_str(), self.wanted)?;
        write!(f, "{}:{} (kept)", self.kept.server, self.kept.name)?;
        for (route, renamed) in &self.others {
            match renamed {
                Some(new) => write!(f, ", {}:{} (served as {new:?})", route.server, route.name)?,
                None => write!(f, ", {}:{} (not served)", route.server, route.name)?,
            }
        }
        Ok(())
    }
}

/// Which kinds of lists differ between two catalogs: what to tell clients with
/// `notifications/*/list_changed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    /// The tool list changed.
    pub tools: bool,
    /// The prompt list changed.
    pub prompts: bool,
    /// The resource or resource template list changed.
    pub resources: bool,
}

impl Changes {
    /// Whether anything changed.
    pub fn any(self) -> bool {
        self.tools || self.prompts || self.resources
    }

    /// Both sets of changes.
    #[must_use]
    pub fn union(self, other: Changes) -> Changes {
        Changes {
            tools: self.tools || other.tools,
            prompts: self.prompts || other.prompts,
            resources: self.resources || other.resources,
        }
    }
}

/// The aggregated lists and their routing tables.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    tools: Vec<Tool>,
    tool_routes: HashMap<String, Route>,
    prompts: Vec<Prompt>,
    prompt_routes: HashMap<String, Route>,
    resources: Vec<Resource>,
    resource_routes: HashMap<String, Route>,
    templates: Vec<ResourceTemplate>,
    /// (the template's text before its first `{`, exposed template, route), longest first.
    template_routes: Vec<(String, Route)>,
    collisions: Vec<Collision>,
}

impl Catalog {
    /// The catalog of `sources`. The order of `sources` does not matter.
    pub fn build<'a>(sources: impl IntoIterator<Item = Source<'a>>) -> Catalog {
        let mut sources: Vec<Source<'a>> = sources.into_iter().collect();
        sources.sort_by(|a, b| a.server.cmp(b.server));
        let mut collisions = Vec::new();

        let (tools, tool_routes) = named(
            &sources,
            Kind::Tool,
            |l| &l.tools,
            |t| t.name.to_string(),
            |t, name| t.name = name.into(),
            &mut collisions,
        );
        let (prompts, prompt_routes) =
            named(&sources, Kind::Prompt, |l| &l.prompts, |p| p.name.clone(), |p, name| p.name = name, &mut collisions);
        let (resources, resource_routes) = located(
            &sources,
            Kind::Resource,
            |l| &l.resources,
            |r| r.uri.clone(),
            |r, uri| r.uri = uri,
            &mut collisions,
        );
        let (templates, template_table) = located(
            &sources,
            Kind::Template,
            |l| &l.templates,
            |t| t.uri_template.clone(),
            |t, uri| t.uri_template = uri,
            &mut collisions,
        );
        let mut template_routes: Vec<(String, Route)> = template_table
            .into_iter()
            .map(|(exposed, route)| (exposed.split('{').next().unwrap_or_default().to_owned(), route))
            .collect();
        // Longest literal first; among equals, by server, then template.
        template_routes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.1.cmp(&b.1)));

        Catalog {
            tools,
            tool_routes,
            prompts,
            prompt_routes,
            resources,
            resource_routes,
            templates,
            template_routes,
            collisions,
        }
    }

    /// The tools, sorted by exposed name.
    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }

    /// The prompts, sorted by exposed name.
    pub fn prompts(&self) -> &[Prompt] {
        &self.prompts
    }

    /// The resources, sorted by exposed URI.
    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    /// The resource templates, sorted by exposed template.
    pub fn templates(&self) -> &[ResourceTemplate] {
        &self.templates
    }

    /// Where the tool clients call `exposed` lives.
    pub fn tool(&self, exposed: &str) -> Option<&Route> {
        self.tool_routes.get(exposed)
    }

    /// The exposed definition of the tool clients call `exposed`.
    pub fn tool_definition(&self, exposed: &str) -> Option<&Tool> {
        self.tools.binary_search_by(|t| t.name.as_ref().cmp(exposed)).ok().map(|i| &self.tools[i])
    }

    /// Where the prompt clients call `exposed` lives.
    pub fn prompt(&self, exposed: &str) -> Option<&Route> {
        self.prompt_routes.get(exposed)
    }

    /// Where a resource read of `uri` goes: a listed resource of that URI, or else
    /// the template whose text before its first `{` is the longest start of `uri`.
    /// The route's name is the URI to read upstream.
    pub fn resource(&self, uri: &str) -> Option<Route> {
        if let Some(route) = self.resource_routes.get(uri) {
            return Some(route.clone());
        }
        let (literal, route) = self.template_routes.iter().find(|(literal, _)| uri.starts_with(literal.as_str()))?;
        // A template exposed under a prefix was `<prefix>__<template>`: strip the
        // prefix part again by replacing the exposed literal with the upstream one.
        let upstream_literal = route.name.split('{').next().unwrap_or_default();
        Some(Route { server: route.server.clone(), name: format!("{upstream_literal}{}", &uri[literal.len()..]) })
    }

    /// Every collision found while building, in order of kind and name.
    pub fn collisions(&self) -> &[Collision] {
        &self.collisions
    }

    /// What differs between `self` and `newer`.
    pub fn changes(&self, newer: &Catalog) -> Changes {
        Changes {
            tools: self.tools != newer.tools,
            prompts: self.prompts != newer.prompts,
            resources: self.resources != newer.resources || self.templates != newer.templates,
        }
    }
}

/// Whether `uri` starts with an RFC 3986 scheme (`ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":"`).
pub fn has_scheme(uri: &str) -> bool {
    let Some((scheme, _)) = uri.split_once(':') else { return false };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// One candidate for an exposed name.
struct Candidate<'a, T> {
    wanted: String,
    route: Route,
    item: &'a T,
}

/// Sorts candidates by (wanted, server, upstream name) and groups equal wants.
fn grouped<T>(mut candidates: Vec<Candidate<'_, T>>) -> BTreeMap<String, Vec<Candidate<'_, T>>> {
    candidates.sort_by(|a, b| (&a.wanted, &a.route).cmp(&(&b.wanted, &b.route)));
    let mut groups: BTreeMap<String, Vec<Candidate<'_, T>>> = BTreeMap::new();
    for c in candidates {
        groups.entry(c.wanted.clone()).or_default().push(c);
    }
    groups
}

/// Tools and prompts: exposed under formed names; losers of a collision renamed.
fn named<T: Clone>(
    sources: &[Source<'_>],
    kind: Kind,
    items: impl Fn(&Listing) -> &Vec<T>,
    name: impl Fn(&T) -> String,
    rename: impl Fn(&mut T, String),
    collisions: &mut Vec<Collision>,
) -> (Vec<T>, HashMap<String, Route>) {
    let mut candidates = Vec::new();
    for s in sources {
        for item in items(s.listing) {
            let original = name(item);
            candidates.push(Candidate {
                wanted: names::exposed(s.prefix, &original),
                route: Route { server: s.server.to_owned(), name: original },
                item,
            });
        }
    }
    let groups = grouped(candidates);
    // Winners first, so a renamed loser can never take a name someone wanted.
    let mut taken: HashSet<String> = groups.keys().cloned().collect();
    let mut out: Vec<(String, T)> = Vec::new();
    let mut routes = HashMap::new();
    for (wanted, group) in groups {
        let mut group = group.into_iter();
        let Some(first) = group.next() else { continue };
        let kept = first.route.clone();
        out.push((wanted.clone(), first.item.clone()));
        routes.insert(wanted.clone(), first.route);
        let mut others = Vec::new();
        for c in group {
            let identity = format!("{}\0{}", c.route.server, c.route.name);
            let renamed = names::hashed(&wanted, identity.as_bytes());
            if taken.insert(renamed.clone()) {
                out.push((renamed.clone(), c.item.clone()));
                routes.insert(renamed.clone(), c.route.clone());
                others.push((c.route, Some(renamed)));
            } else {
                others.push((c.route, None));
            }
        }
        if !others.is_empty() {
            collisions.push(Collision { kind, wanted, kept, others });
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let items = out
        .into_iter()
        .map(|(exposed, mut item)| {
            rename(&mut item, exposed);
            item
        })
        .collect();
    (items, routes)
}

/// Resources and templates: URIs with a scheme as they are; the first of equal
/// URIs served, the others reported.
fn located<T: Clone>(
    sources: &[Source<'_>],
    kind: Kind,
    items: impl Fn(&Listing) -> &Vec<T>,
    uri: impl Fn(&T) -> String,
    set_uri: impl Fn(&mut T, String),
    collisions: &mut Vec<Collision>,
) -> (Vec<T>, HashMap<String, Route>) {
    let mut candidates = Vec::new();
    for s in sources {
        for item in items(s.listing) {
            let original = uri(item);
            let wanted = if has_scheme(&original) {
                original.clone()
            } else {
                format!("{}{}{original}", s.prefix, names::SEPARATOR)
            };
            candidates.push(Candidate { wanted, route: Route { server: s.server.to_owned(), name: original }, item });
        }
    }
    let mut out = Vec::new();
    let mut routes = HashMap::new();
    for (wanted, group) in grouped(candidates) {
        let mut group = group.into_iter();
        let Some(first) = group.next() else { continue };
        let mut item = first.item.clone();
        set_uri(&mut item, wanted.clone());
        out.push(item);
        let others: Vec<(Route, Option<String>)> = group.map(|c| (c.route, None)).collect();
        if !others.is_empty() {
            collisions.push(Collision { kind, wanted: wanted.clone(), kept: first.route.clone(), others });
        }
        routes.insert(wanted, first.route);
    }
    (out, routes)
}

#[cfg(test)]
mod tests;
