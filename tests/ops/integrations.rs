//! Integrations: admins create clients (the secret shown once works at the token API and is
//! nowhere else), add and revoke secrets, revoke clients (refused by the token API at once);
//! viewers and operators only look; hostile input is refused with nothing created.

use super::Operator;
use super::support::stack::*;
use super::support::{self, Backend};
use crate::on_both_backends;

/// Integration clients in the database (the empty id never exists).
async fn client_count(stack: &Stack) -> i64 {
    stack
        .scalar("SELECT COUNT(*) FROM clients WHERE client_id <> $1", "")
        .await
}

async fn audit_count(stack: &Stack, action: &str) -> i64 {
    stack
        .scalar("SELECT COUNT(*) FROM audit_log WHERE action = $1", action)
        .await
}

/// The stored id of the secret whose value is `secret` (looked up by its digest).
async fn secret_id_of(stack: &Stack, secret: &str) -> String {
    use sqlx::Row;
    let db = stack.db().await;
    let row = sqlx::query("SELECT id FROM client_secrets WHERE digest = $1")
        .bind(samvault::storage::clients::digest(secret).to_vec())
        .fetch_one(db.pool())
        .await
        .unwrap();
    row.try_get("id").unwrap()
}

/// The create form as an admin fills it: both permissions, Partner Center, every partner.
fn create_form<'a>(csrf: &'a str, name: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("csrf", csrf),
        ("name", name),
        ("permission", "tokens:issue"),
        ("permission", "partners:read"),
        ("resource", PARTNER_CENTER),
        ("partners", ""),
        ("rate_limit", "600"),
    ]
}

async fn admin_creates_rolls_and_revokes_a_client(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.consent("jane@contoso.example").await;
    let mut alice = Operator::signed_in(&stack, "alice", "admin").await;

    // Create: the page answers with the client id and the secret, once.
    let csrf = alice.csrf("/ops/integrations").await;
    let (status, page, _) = alice
        .post("/ops/integrations", &create_form(&csrf, "invoice sync"))
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("class=\"secret-once\""), "{page}");
    let client_id = field(&page, "client_id");
    let first = (client_id.clone(), field(&page, "client_secret"));
    assert!(first.1.starts_with("svs_"), "{}", first.1);
    assert_eq!(stack.token(&first, CONTOSO, token_body()).await.0, 200);

    // The secret appears nowhere else: not on the list, not in the database, not in the log.
    let (status, list, _) = alice.get("/ops/integrations").await;
    assert_eq!(status, 200);
    assert!(
        list.contains(&client_id) && list.contains("invoice sync"),
        "{list}"
    );
    assert!(!list.contains(&first.1), "the list shows a secret");
    assert!(!contains(&stack.database_dump(), &first.1));
    assert!(!stack.log(0).contains(&first.1), "a secret is in the log");

    // Add a secret: both work.
    let (status, page, _) = alice
        .post(
            &format!("/ops/integrations/{client_id}/secrets"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(field(&page, "client_id"), client_id);
    let second = (client_id.clone(), field(&page, "client_secret"));
    assert_ne!(first.1, second.1);
    assert_eq!(stack.token(&first, CONTOSO, token_body()).await.0, 200);
    assert_eq!(stack.token(&second, CONTOSO, token_body()).await.0, 200);
    assert!(!contains(&stack.database_dump(), &second.1));
    let (_, list, _) = alice.get("/ops/integrations").await;
    assert!(!list.contains(&second.1), "the list shows a secret");

    // Revoke the first secret: refused at once (no waiting), the second still works.
    let first_id = secret_id_of(&stack, &first.1).await;
    assert!(list.contains(&first_id), "secret ids are listed");
    let (status, _, location) = alice
        .post(
            &format!("/ops/integrations/{client_id}/secrets/{first_id}/revoke"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(
        (status, location.as_deref()),
        (303, Some("/ops/integrations"))
    );
    let (status, problem) = stack.token(&first, CONTOSO, token_body()).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("invalid_client"))
    );
    assert_eq!(stack.token(&second, CONTOSO, token_body()).await.0, 200);
    // Revoking it again: nothing to revoke.
    let (status, _, _) = alice
        .post(
            &format!("/ops/integrations/{client_id}/secrets/{first_id}/revoke"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(status, 404);

    // Revoking the client takes its id typed out; a wrong or missing one changes nothing.
    let revoke = format!("/ops/integrations/{client_id}/revoke");
    for confirm in [None, Some(""), Some("not-the-client-id")] {
        let mut form = vec![("csrf", csrf.as_str())];
        if let Some(confirm) = confirm {
            form.push(("confirm", confirm));
        }
        let (status, _, _) = alice.post(&revoke, &form).await;
        assert_eq!(status, 400, "{confirm:?}");
        assert_eq!(stack.token(&second, CONTOSO, token_body()).await.0, 200);
    }
    let (status, _, location) = alice
        .post(&revoke, &[("csrf", &csrf), ("confirm", &client_id)])
        .await;
    assert_eq!(
        (status, location.as_deref()),
        (303, Some("/ops/integrations"))
    );
    let (status, problem) = stack.token(&second, CONTOSO, token_body()).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("invalid_client"))
    );

    // A revoked client is shown as such, with no forms left, and gets no new secret.
    let (_, list, _) = alice.get("/ops/integrations").await;
    assert!(list.contains("badge revoked"), "{list}");
    assert!(!list.contains(&format!("action=\"{revoke}\"")), "{list}");
    let (status, _, _) = alice
        .post(
            &format!("/ops/integrations/{client_id}/secrets"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(status, 404);

    for action in [
        "ops.client.create",
        "ops.client.secret.add",
        "ops.client.secret.revoke",
        "ops.client.revoke",
    ] {
        assert_eq!(audit_count(&stack, action).await, 1, "{action}");
    }
    let dump = stack.database_dump();
    for secret in [&first.1, &second.1] {
        assert!(!contains(&dump, secret), "a secret is in the database");
        assert!(
            !stack.log(0).contains(secret.as_str()),
            "a secret is in the log"
        );
    }
}

async fn only_admins_manage_clients(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.consent("jane@contoso.example").await;
    let creds = stack.client(&[PARTNER_CENTER]);
    let client_id = creds.0.clone();
    let secret_id = secret_id_of(&stack, &creds.1).await;
    let revoke_secret = format!("/ops/integrations/{client_id}/secrets/{secret_id}/revoke");
    let add_secret = format!("/ops/integrations/{client_id}/secrets");
    let revoke = format!("/ops/integrations/{client_id}/revoke");

    for (name, role) in [("vera", "viewer"), ("otto", "operator")] {
        let mut user = Operator::signed_in(&stack, name, role).await;
        let (status, page, _) = user.get("/ops/integrations").await;
        assert_eq!(status, 200, "{role}");
        assert!(page.contains(&client_id), "{role} sees the clients");
        for form in [
            "action=\"/ops/integrations\"",
            "Revoke client",
            "Revoke secret",
            "Add a secret",
        ] {
            assert!(!page.contains(form), "{role} is shown {form}");
        }
        let csrf = field(&page, "csrf");
        for (path, form) in [
            ("/ops/integrations", create_form(&csrf, "sneaky")),
            (add_secret.as_str(), vec![("csrf", csrf.as_str())]),
            (revoke_secret.as_str(), vec![("csrf", csrf.as_str())]),
            (
                revoke.as_str(),
                vec![("csrf", csrf.as_str()), ("confirm", client_id.as_str())],
            ),
        ] {
            let (status, _, _) = user.post(path, &form).await;
            assert_eq!(status, 403, "{role} POST {path}");
        }
    }

    // An admin's form without the session's CSRF token is refused too.
    let mut alice = Operator::signed_in(&stack, "alice", "admin").await;
    let csrf = alice.csrf("/ops/integrations").await;
    let mut forged = create_form("", "forged");
    forged.remove(0);
    for (path, form) in [
        ("/ops/integrations", forged),
        (add_secret.as_str(), vec![]),
        (revoke_secret.as_str(), vec![("csrf", "not-the-token")]),
        (revoke.as_str(), vec![("confirm", client_id.as_str())]),
    ] {
        let (status, _, _) = alice.post(path, &form).await;
        assert_eq!(status, 403, "no CSRF: POST {path}");
    }
    // Nor may a signed-out browser do anything.
    let mut stranger = Operator::new(&stack);
    let (status, _, location) = stranger
        .post("/ops/integrations", &create_form(&csrf, "stranger"))
        .await;
    assert_eq!((status, location.as_deref()), (303, Some("/ops/signin")));

    assert_eq!(client_count(&stack).await, 1, "no client was created");
    assert_eq!(
        stack
            .scalar(
                "SELECT COUNT(*) FROM client_secrets WHERE client_id = $1",
                &client_id
            )
            .await,
        1,
        "no secret was added"
    );
    assert_eq!(stack.token(&creds, CONTOSO, token_body()).await.0, 200);
    assert_eq!(audit_count(&stack, "ops.client.create").await, 0);
}

async fn bad_client_input_is_refused(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    let mut alice = Operator::signed_in(&stack, "alice", "admin").await;
    let csrf = alice.csrf("/ops/integrations").await;

    let long_name = "n".repeat(101);
    let set = |field: &'static str, value: &'static str| {
        move |form: &mut Vec<(&str, &str)>| {
            form.retain(|(n, _)| *n != field);
            form.push((field, value));
        }
    };
    type Edit<'a> = Box<dyn Fn(&mut Vec<(&'a str, &'a str)>) + 'a>;
    let cases: Vec<(&str, Edit)> = vec![
        ("empty name", Box::new(set("name", ""))),
        ("blank name", Box::new(set("name", "   "))),
        ("overlong name", Box::new(|f| f[1].1 = long_name.as_str())),
        ("control character", Box::new(set("name", "line\nbreak"))),
        ("repeated name", Box::new(|f| f.push(("name", "again")))),
        (
            "unknown permission",
            Box::new(|f| f.push(("permission", "tokens:all"))),
        ),
        (
            "no permission",
            Box::new(|f| f.retain(|(n, _)| *n != "permission")),
        ),
        (
            "unknown resource",
            Box::new(|f| f.push(("resource", "https://evil.example"))),
        ),
        (
            "not a resource",
            Box::new(|f| f.push(("resource", "javascript:alert(1)"))),
        ),
        (
            "no resource",
            Box::new(|f| f.retain(|(n, _)| *n != "resource")),
        ),
        ("zero rate", Box::new(set("rate_limit", "0"))),
        ("negative rate", Box::new(set("rate_limit", "-5"))),
        ("absurd rate", Box::new(set("rate_limit", "1000000000000"))),
        (
            "overflowing rate",
            Box::new(set("rate_limit", "99999999999999999999999")),
        ),
        ("text rate", Box::new(set("rate_limit", "fast"))),
        (
            "missing rate",
            Box::new(|f| f.retain(|(n, _)| *n != "rate_limit")),
        ),
        ("bad partner", Box::new(set("partners", "contoso"))),
        (
            "one bad partner of two",
            Box::new(set("partners", "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01 x")),
        ),
    ];
    for (case, edit) in &cases {
        let mut form = create_form(&csrf, "valid name");
        edit(&mut form);
        let (status, page, _) = alice.post("/ops/integrations", &form).await;
        assert_eq!(status, 400, "{case}: {page}");
        assert!(
            page.contains("This request cannot be used"),
            "{case}: {page}"
        );
    }
    // Ids that cannot be ours are not looked up; unknown ones are not found.
    let long_id = "x".repeat(65);
    for path in [
        format!("/ops/integrations/{long_id}/secrets"),
        "/ops/integrations/%00/secrets".to_string(),
        "/ops/integrations/a%00b/secrets/%00/revoke".to_string(),
        "/ops/integrations/no-such-client/secrets".to_string(),
        "/ops/integrations/no-such-client/secrets/no-such-secret/revoke".to_string(),
    ] {
        let (status, _, _) = alice.post(&path, &[("csrf", &csrf)]).await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, _, _) = alice
        .post(
            "/ops/integrations/no-such-client/revoke",
            &[("csrf", &csrf), ("confirm", "no-such-client")],
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(client_count(&stack).await, 0, "nothing was created");
    assert_eq!(audit_count(&stack, "ops.client.create").await, 0);

    // A hostile name is stored as given and shown escaped, on the result and on the list.
    let hostile = "<script>alert(1)</script>";
    let (status, page, _) = alice
        .post("/ops/integrations", &create_form(&csrf, hostile))
        .await;
    assert_eq!(status, 200, "{page}");
    let (_, list, _) = alice.get("/ops/integrations").await;
    for html in [&page, &list] {
        assert!(!html.contains(hostile), "unescaped: {html}");
        assert!(
            html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
            "{html}"
        );
    }
}

/// `customers:issue` is offered on the form but never ticked by default (a client gets it only
/// when an admin asks), and a client created with it lists it.
async fn customers_issue_is_offered_unticked(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    let mut alice = Operator::signed_in(&stack, "alice", "admin").await;
    let (_, page, _) = alice.get("/ops/integrations").await;
    let boxes: Vec<&str> = page
        .split("<input ")
        .filter(|i| i.contains("name=\"permission\""))
        .collect();
    let customers: Vec<&&str> = boxes
        .iter()
        .filter(|i| i.contains("value=\"customers:issue\""))
        .collect();
    assert_eq!(customers.len(), 1, "{page}");
    assert!(
        !customers[0].split('>').next().unwrap().contains("checked"),
        "{page}"
    );
    let ticked = boxes
        .iter()
        .filter(|i| i.split('>').next().unwrap().contains("checked"));
    assert_eq!(
        ticked.count(),
        2,
        "tokens:issue and partners:read stay ticked"
    );

    let csrf = alice.csrf("/ops/integrations").await;
    let mut form = create_form(&csrf, "crm");
    form.push(("permission", "customers:issue"));
    let (status, page, _) = alice.post("/ops/integrations", &form).await;
    assert_eq!(status, 200, "{page}");
    let (_, list, _) = alice.get("/ops/integrations").await;
    assert!(list.contains("customers:issue"), "{list}");
}

on_both_backends!(
    customers_issue_is_offered_unticked,
    admin_creates_rolls_and_revokes_a_client,
    only_admins_manage_clients,
    bad_client_input_is_refused
);
