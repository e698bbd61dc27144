use super::merge::Merge;
use super::*;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher::Event;

fn list(s: &str) -> WatchNamespaces {
    s.parse().unwrap_or_else(|e| panic!("{s:?} refused: {e}"))
}

#[test]
fn one_name_or_a_comma_separated_list() {
    assert_eq!(list("team-a"), WatchNamespaces::Only(vec!["team-a".into()]));
    assert_eq!(
        list("a,b,c"),
        WatchNamespaces::Only(vec!["a".into(), "b".into(), "c".into()])
    );
    assert_eq!(list(" a , b "), list("a,b"), "spaces around names are ignored");
    assert_eq!(list("b,a").to_string(), "b,a", "the order given is kept");
    assert_eq!(WatchNamespaces::All.to_string(), "*");
    let max = "a".repeat(63);
    assert_eq!(list(&max).names().unwrap(), [max]);
}

#[test]
fn empty_names_duplicates_and_non_labels_are_refused_with_what_to_change() {
    let err = |s: &str| s.parse::<WatchNamespaces>().unwrap_err();
    assert_eq!(err(""), NamespaceListError::Empty);
    assert_eq!(err("  "), NamespaceListError::Empty);
    assert!(
        err("").to_string().contains("leave --watch-namespace"),
        "{}",
        err("")
    );
    for s in ["a,,b", "a,", ",a", "a, ,b"] {
        assert!(
            matches!(err(s), NamespaceListError::EmptyName { .. }),
            "{s:?}: {:?}",
            err(s)
        );
    }
    assert!(err("a,,b").to_string().contains("namespace 2"), "{}", err("a,,b"));
    assert_eq!(err("a,b,a"), NamespaceListError::Duplicate { name: "a".into() });
    assert!(err("a,b,a").to_string().contains("listed twice"));
    for bad in [
        "Team-A",
        "team_a",
        "-a",
        "a-",
        "a.b",
        "*",
        "all=1",
        &"a".repeat(64),
    ] {
        assert_eq!(
            err(&format!("ok,{bad}")),
            NamespaceListError::Invalid { name: bad.into() },
            "{bad:?}"
        );
    }
    assert!(err("Team-A").to_string().contains("lowercase"));
}

#[test]
fn contains_and_names() {
    assert!(WatchNamespaces::All.contains("anything"));
    assert_eq!(WatchNamespaces::All.names(), None);
    let ab = list("a,b");
    assert!(ab.contains("a") && ab.contains("b") && !ab.contains("c"));
}

#[test]
fn lease_names_keep_the_one_namespace_form_and_sort_a_list() {
    assert_eq!(WatchNamespaces::All.lease_name(), "latchkey");
    assert_eq!(list("team-a").lease_name(), "latchkey-team-a");
    assert_eq!(list("b,a,c").lease_name(), "latchkey-a.b.c");
    assert_eq!(list("c,a,b").lease_name(), list("a,b,c").lease_name());
    let long: Vec<String> = (0..10).map(|i| format!("{i}{}", "n".repeat(40))).collect();
    let name = list(&long.join(",")).lease_name();
    assert!(name.starts_with("latchkey-ns-") && name.len() == 28, "{name}");
    let mut reversed = long.clone();
    reversed.reverse();
    assert_eq!(list(&reversed.join(",")).lease_name(), name);
}

fn cm(name: &str, rv: &str) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c.metadata.resource_version = Some(rv.into());
    c
}

/// The events as (kind, name@resourceVersion) for comparison.
fn show(events: &[Event<ConfigMap>]) -> Vec<String> {
    let id = |c: &ConfigMap| {
        format!(
            "{}@{}",
            c.metadata.name.as_deref().unwrap(),
            c.metadata.resource_version.as_deref().unwrap()
        )
    };
    events
        .iter()
        .map(|e| match e {
            Event::Init => "Init".into(),
            Event::InitApply(c) => format!("InitApply {}", id(c)),
            Event::InitDone => "InitDone".into(),
            Event::Apply(c) => format!("Apply {}", id(c)),
            Event::Delete(c) => format!("Delete {}", id(c)),
        })
        .collect()
}

/// Namespace `slot` lists `objects`.
fn list_in(m: &mut Merge<ConfigMap>, slot: usize, objects: &[ConfigMap]) -> Vec<String> {
    let mut out = m.on_event(slot, Event::Init);
    for o in objects {
        out.extend(m.on_event(slot, Event::InitApply(o.clone())));
    }
    out.extend(m.on_event(slot, Event::InitDone));
    show(&out)
}

#[test]
fn nothing_goes_out_until_every_namespace_is_listed_then_one_list_of_all() {
    let mut m = Merge::new(3);
    assert!(list_in(&mut m, 0, &[cm("a1", "1")]).is_empty());
    // A change in a listed namespace before the others are listed is held.
    assert!(show(&m.on_event(0, Event::Apply(cm("a2", "2")))).is_empty());
    assert!(list_in(&mut m, 1, &[]).is_empty());
    assert!(!m.is_synced());
    let out = list_in(&mut m, 2, &[cm("c1", "3")]);
    assert!(m.is_synced());
    assert_eq!(
        out,
        [
            "Init",
            "InitApply a1@1",
            "InitApply a2@2",
            "InitApply c1@3",
            "InitDone"
        ]
    );
    // Then changes pass through.
    assert_eq!(show(&m.on_event(1, Event::Apply(cm("b1", "4")))), ["Apply b1@4"]);
    assert_eq!(
        show(&m.on_event(0, Event::Delete(cm("a1", "5")))),
        ["Delete a1@5"]
    );
}

#[test]
fn a_first_list_that_restarts_keeps_only_the_last_attempt() {
    let mut m = Merge::new(2);
    // Namespace 0's list fails half-way (no InitDone) and starts again
    // without the object that was deleted meanwhile.
    m.on_event(0, Event::Init);
    m.on_event(0, Event::InitApply(cm("gone", "1")));
    assert!(list_in(&mut m, 0, &[cm("kept", "2")]).is_empty());
    let out = list_in(&mut m, 1, &[]);
    assert_eq!(out, ["Init", "InitApply kept@2", "InitDone"]);
}

#[test]
fn a_relist_of_one_namespace_becomes_changes_and_leaves_the_others_alone() {
    let mut m = Merge::new(2);
    list_in(&mut m, 0, &[cm("a1", "1"), cm("a2", "2")]);
    list_in(&mut m, 1, &[cm("b1", "3")]);
    // Namespace 0's watch expired: while it was away a2 was deleted, a1
    // changed and a3 appeared.
    let out = list_in(&mut m, 0, &[cm("a1", "7"), cm("a3", "8")]);
    assert_eq!(out, ["Delete a2@2", "Apply a1@7", "Apply a3@8"]);
    // Namespace 1 relists unchanged: its object again, nothing deleted, no Init.
    assert_eq!(list_in(&mut m, 1, &[cm("b1", "3")]), ["Apply b1@3"]);
    // A delete after the relist uses what the relist brought.
    assert_eq!(
        show(&m.on_event(0, Event::Delete(cm("a3", "9")))),
        ["Delete a3@9"]
    );
    let out = list_in(&mut m, 0, &[]);
    assert_eq!(out, ["Delete a1@7"], "only a1 was left in namespace 0");
}

#[tokio::test]
async fn merged_streams_give_one_list_then_changes_and_pass_errors_through() {
    use futures::StreamExt;
    type Item = Result<Event<ConfigMap>, watcher::Error>;
    let first: Vec<Item> = vec![
        Ok(Event::Init),
        Ok(Event::InitApply(cm("a1", "1"))),
        Ok(Event::InitDone),
    ];
    let second: Vec<Item> = vec![
        Err(watcher::Error::NoResourceVersion),
        Ok(Event::Init),
        Ok(Event::InitApply(cm("b1", "2"))),
        Ok(Event::InitDone),
        Ok(Event::Apply(cm("b1", "3"))),
    ];
    let out: Vec<Item> = merged(vec![
        futures::stream::iter(first).boxed(),
        futures::stream::iter(second).boxed(),
    ])
    .collect()
    .await;
    let errors = out.iter().filter(|e| e.is_err()).count();
    assert_eq!(errors, 1, "the error is passed on");
    let events: Vec<Event<ConfigMap>> = out.into_iter().filter_map(Result::ok).collect();
    let shown = show(&events);
    assert_eq!(shown.first().map(String::as_str), Some("Init"));
    assert_eq!(shown.len(), 5, "{shown:?}");
    assert_eq!(shown[3..], ["InitDone", "Apply b1@3"]);
    let mut listed = shown[1..3].to_vec();
    listed.sort();
    assert_eq!(listed, ["InitApply a1@1", "InitApply b1@2"]);
    // One stream is passed on as it is.
    let single: Vec<Item> = merged(vec![futures::stream::iter(vec![Ok(Event::Init)]).boxed()])
        .collect()
        .await;
    assert_eq!(
        show(&single.into_iter().filter_map(Result::ok).collect::<Vec<_>>()),
        ["Init"]
    );
}
