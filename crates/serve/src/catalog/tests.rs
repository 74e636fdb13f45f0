use std::sync::Arc;

use proptest::prelude::*;
use rmcp::model::{Prompt, Resource, ResourceTemplate, Tool};

use super::*;

fn tool(name: &str) -> Tool {
    Tool::new(name.to_owned(), format!("does {name}"), Arc::new(serde_json::Map::new()))
}

fn listing(tools: &[&str]) -> Listing {
    Listing { tools: tools.iter().map(|t| tool(t)).collect(), ..Listing::default() }
}

fn names(c: &Catalog) -> Vec<&str> {
    c.tools().iter().map(|t| t.name.as_ref()).collect()
}

fn route(server: &str, name: &str) -> Route {
    Route { server: server.to_owned(), name: name.to_owned() }
}

#[test]
fn tools_are_exposed_under_their_prefix_and_routed_back() {
    let gh = listing(&["create_issue", "search"]);
    let fs = listing(&["read"]);
    let c = Catalog::build([
        Source { server: "github", prefix: "gh", listing: &gh },
        Source { server: "fs", prefix: "fs", listing: &fs },
    ]);
    assert_eq!(names(&c), ["fs__read", "gh__create_issue", "gh__search"]);
    assert_eq!(c.tool("gh__search"), Some(&route("github", "search")));
    assert_eq!(c.tool("fs__read"), Some(&route("fs", "read")));
    assert_eq!(c.tool("github__search"), None, "the prefix, not the name, is what clients see");
    assert_eq!(c.tool_definition("gh__search").map(|t| t.description.as_deref()), Some(Some("does search")));
    assert!(c.collisions().is_empty());
}

#[test]
fn the_route_comes_from_the_table_not_from_splitting_the_name() {
    // A prefix with the separator in it: splitting "a__b__c" would guess wrong.
    let l = listing(&["c"]);
    let m = listing(&["b__c"]);
    let c = Catalog::build([
        Source { server: "one", prefix: "a__b", listing: &l },
        Source { server: "two", prefix: "a", listing: &m },
    ]);
    // Both want "a__b__c": one keeps it, the other is renamed; each routes right.
    let kept = c.tool("a__b__c").unwrap();
    assert_eq!(kept, &route("one", "c"), "server names order the collision");
    let other = c.tools().iter().map(|t| t.name.to_string()).find(|n| n != "a__b__c").unwrap();
    assert_eq!(c.tool(&other), Some(&route("two", "b__c")));
}

#[test]
fn a_collision_is_resolved_by_server_name_whatever_the_order_and_reported() {
    let a = listing(&["get.item"]);
    let b = listing(&["get_item"]);
    let one = Catalog::build([
        Source { server: "zeta", prefix: "p", listing: &a },
        Source { server: "alpha", prefix: "p", listing: &b },
    ]);
    let two = Catalog::build([
        Source { server: "alpha", prefix: "p", listing: &b },
        Source { server: "zeta", prefix: "p", listing: &a },
    ]);
    assert_eq!(one, two, "the order servers are given in does not matter");
    assert_eq!(one.tool("p__get_item"), Some(&route("alpha", "get_item")));
    let [collision] = one.collisions() else { panic!("one collision: {:?}", one.collisions()) };
    assert_eq!(collision.kind, Kind::Tool);
    assert_eq!(collision.wanted, "p__get_item");
    assert_eq!(collision.kept, route("alpha", "get_item"));
    let [(loser, Some(renamed))] = collision.others.as_slice() else { panic!("{collision:?}") };
    assert_eq!(loser, &route("zeta", "get.item"));
    assert!(renamed.starts_with("p__get_item_") && names::is_valid(renamed), "{renamed}");
    assert_eq!(one.tool(renamed), Some(&route("zeta", "get.item")));
    assert_eq!(
        collision.to_string(),
        format!("tool name \"p__get_item\" is wanted by alpha:get_item (kept), zeta:get.item (served as {renamed:?})")
    );
}

#[test]
fn every_kind_is_named_in_words() {
    let words = [Kind::Tool, Kind::Prompt, Kind::Resource, Kind::Template].map(Kind::as_str);
    assert_eq!(words, ["tool", "prompt", "resource", "resource template"]);
}

#[test]
fn a_renamed_loser_keeps_its_name_when_others_come_and_go() {
    let a = listing(&["x"]);
    let b = listing(&["x"]);
    let c = listing(&["y"]);
    let before = Catalog::build([
        Source { server: "a", prefix: "p", listing: &a },
        Source { server: "b", prefix: "p", listing: &b },
    ]);
    let after = Catalog::build([
        Source { server: "a", prefix: "p", listing: &a },
        Source { server: "b", prefix: "p", listing: &b },
        Source { server: "c", prefix: "q", listing: &c },
    ]);
    let renamed = |cat: &Catalog| cat.collisions()[0].others[0].1.clone();
    assert_eq!(renamed(&before), renamed(&after));
}

#[test]
fn a_long_name_is_cut_with_a_hash_and_still_routes() {
    let long = "a_really_long_tool_name_that_goes_on_and_on_and_on_past_the_limit";
    let l = listing(&[long]);
    let c = Catalog::build([Source { server: "s", prefix: "server", listing: &l }]);
    let [t] = c.tools() else { panic!() };
    assert_eq!(t.name.len(), names::MAX_LEN);
    assert_eq!(c.tool(&t.name), Some(&route("s", long)));
}

#[test]
fn prompts_follow_the_tool_rules() {
    let l = Listing { prompts: vec![Prompt::new("summarize", Some("sums"), None)], ..Listing::default() };
    let c = Catalog::build([Source { server: "s", prefix: "docs", listing: &l }]);
    assert_eq!(c.prompts().iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["docs__summarize"]);
    assert_eq!(c.prompt("docs__summarize"), Some(&route("s", "summarize")));
    assert_eq!(c.prompt("summarize"), None);
}

#[test]
fn resource_uris_with_a_scheme_pass_through_and_duplicates_keep_the_first_server() {
    let a = Listing {
        resources: vec![Resource::new("file:///etc/hosts", "hosts"), Resource::new("notes.txt", "notes")],
        ..Listing::default()
    };
    let b = Listing { resources: vec![Resource::new("file:///etc/hosts", "hosts too")], ..Listing::default() };
    let c = Catalog::build([
        Source { server: "b", prefix: "b", listing: &b },
        Source { server: "a", prefix: "a", listing: &a },
    ]);
    let uris: Vec<&str> = c.resources().iter().map(|r| r.uri.as_str()).collect();
    assert_eq!(uris, ["a__notes.txt", "file:///etc/hosts"]);
    assert_eq!(c.resource("file:///etc/hosts"), Some(route("a", "file:///etc/hosts")));
    assert_eq!(c.resource("a__notes.txt"), Some(route("a", "notes.txt")));
    let [collision] = c.collisions() else { panic!("{:?}", c.collisions()) };
    assert_eq!(
        (collision.kind, collision.others.clone()),
        (Kind::Resource, vec![(route("b", "file:///etc/hosts"), None)])
    );
}

#[test]
fn a_read_of_an_unlisted_uri_goes_to_the_template_with_the_longest_literal() {
    let a = Listing { templates: vec![ResourceTemplate::new("repo://{owner}/{name}", "repo")], ..Listing::default() };
    let b = Listing {
        templates: vec![
            ResourceTemplate::new("repo://rust-lang/{name}", "rust repo"),
            ResourceTemplate::new("{path}", "anything"),
        ],
        ..Listing::default()
    };
    let c = Catalog::build([
        Source { server: "a", prefix: "a", listing: &a },
        Source { server: "b", prefix: "b", listing: &b },
    ]);
    assert_eq!(c.resource("repo://rust-lang/cargo"), Some(route("b", "repo://rust-lang/cargo")));
    assert_eq!(c.resource("repo://tokio-rs/tokio"), Some(route("a", "repo://tokio-rs/tokio")));
    // A template without a scheme is exposed under the prefix; the read goes back without it.
    assert_eq!(c.resource("b__some/path"), Some(route("b", "some/path")));
    assert_eq!(c.resource("elsewhere://x"), None);
    let templates: Vec<&str> = c.templates().iter().map(|t| t.uri_template.as_str()).collect();
    assert_eq!(templates, ["b__{path}", "repo://rust-lang/{name}", "repo://{owner}/{name}"]);
}

#[test]
fn changes_name_the_kinds_that_differ() {
    let a = listing(&["x"]);
    let b = listing(&["x", "y"]);
    let p = Listing { prompts: vec![Prompt::new("p", None::<String>, None)], ..listing(&["x"]) };
    let r = Listing { resources: vec![Resource::new("s://r", "r")], ..listing(&["x"]) };
    let t = Listing { templates: vec![ResourceTemplate::new("s://{r}", "r")], ..listing(&["x"]) };
    let build = |l: &Listing| Catalog::build([Source { server: "s", prefix: "s", listing: l }]);
    let base = build(&a);
    assert_eq!(base.changes(&build(&a)), Changes::default());
    assert!(!base.changes(&build(&a)).any());
    assert_eq!(base.changes(&build(&b)), Changes { tools: true, ..Changes::default() });
    assert_eq!(base.changes(&build(&p)), Changes { prompts: true, ..Changes::default() });
    assert_eq!(base.changes(&build(&r)), Changes { resources: true, ..Changes::default() });
    assert_eq!(base.changes(&build(&t)), Changes { resources: true, ..Changes::default() });
    let mut described = a.clone();
    described.tools[0].description = Some("new words".into());
    assert!(base.changes(&build(&described)).tools, "a changed description is a change");
    assert_eq!(
        Changes { tools: true, ..Changes::default() }.union(Changes { resources: true, ..Changes::default() }),
        Changes { tools: true, prompts: false, resources: true }
    );
    // Each kind alone is a change, and survives a union with nothing.
    let none = Changes::default();
    for one in [Changes { tools: true, ..none }, Changes { prompts: true, ..none }, Changes { resources: true, ..none }]
    {
        assert!(one.any(), "{one:?}");
        assert_eq!(one.union(none), one);
        assert_eq!(none.union(one), one);
    }
}

#[test]
fn schemes() {
    assert!(has_scheme("file:///x"));
    assert!(has_scheme("git+ssh://x"));
    assert!(has_scheme("urn:isbn:1"));
    assert!(!has_scheme("notes.txt"));
    assert!(!has_scheme("1abc://x"));
    assert!(!has_scheme(":x"));
    assert!(!has_scheme("a b:c"));
}

fn arb_sources() -> impl Strategy<Value = Vec<(String, String, Vec<String>)>> {
    // Few characters, so that collisions (raw and after cleaning) are common.
    let server = "[ab.]{1,3}";
    let prefix = "[ab._]{1,3}";
    let tool = "[ab._]{1,4}|[ab]{60,70}";
    prop::collection::vec((server, prefix, prop::collection::vec(tool, 0..6)), 0..6).prop_map(|mut v| {
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|a, b| a.0 == b.0);
        v
    })
}

proptest! {
    #[test]
    fn every_upstream_tool_is_reachable_under_one_valid_name(sources in arb_sources(), seed in any::<u64>()) {
        let listings: Vec<(String, String, Listing)> = sources
            .iter()
            .map(|(s, p, tools)| (s.clone(), p.clone(), listing(&tools.iter().map(String::as_str).collect::<Vec<_>>())))
            .collect();
        let mut given: Vec<Source<'_>> =
            listings.iter().map(|(s, p, l)| Source { server: s, prefix: p, listing: l }).collect();
        let c = Catalog::build(given.clone());
        // Any order gives the same catalog.
        let n = given.len();
        if n > 1 {
            given.rotate_left(usize::try_from(seed % n as u64).unwrap());
        }
        prop_assert_eq!(&c, &Catalog::build(given));

        let exposed: Vec<&str> = names(&c);
        let unique: HashSet<&str> = exposed.iter().copied().collect();
        prop_assert_eq!(unique.len(), exposed.len(), "exposed names are unique");
        prop_assert!(exposed.windows(2).all(|w| w[0] < w[1]), "sorted");
        for name in &exposed {
            prop_assert!(names::is_valid(name), "{}", name);
            prop_assert!(c.tool(name).is_some());
        }
        // Every distinct (server, tool) is served, unless it lost twice (not here:
        // hashes of distinct identities do not collide).
        let mut wanted: HashSet<Route> = HashSet::new();
        for (s, _, tools) in &sources {
            for t in tools {
                wanted.insert(route(s, t));
            }
        }
        let routed: HashSet<Route> = exposed.iter().map(|n| c.tool(n).unwrap().clone()).collect();
        prop_assert_eq!(routed, wanted);
    }
}
