//! The operator console over real HTTP: sign-in and its cookie, CSRF, roles, sign-out, and
//! that a cookie never authenticates the JSON API. Page-by-page tests live beside this file
//! (`console_*.rs`); they use [`Browser`]. The browser suite (`tests/browser/`) drives the
//! same pages in Chromium.

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

/// A signed-in browser, as far as HTTP goes: its session cookie, and the CSRF token its
/// pages carry. Redirects are not followed, so a test sees each answer.
pub(crate) struct Browser {
    base: String,
    client: reqwest::Client,
    pub cookie: String,
    pub csrf: String,
}

impl Browser {
    /// Creates a user with `role` (through the API, with the bootstrap admin token) and signs
    /// it in through the console's form.
    pub(crate) async fn signed_in(app: &TestApp, username: &str, role: &str) -> Browser {
        let created = app
            .post("/users", ADMIN_TOKEN, json!({ "username": username, "password": "a long password", "role": role }))
            .await;
        assert_eq!(created.status(), StatusCode::CREATED, "creating {username}");
        Browser::sign_in(app, username, "a long password").await.expect("signed in")
    }

    /// Signs in through the form; `None` when the console refuses the credentials.
    pub(crate) async fn sign_in(app: &TestApp, username: &str, password: &str) -> Option<Browser> {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let page = client.get(app.url("/ui/sign-in")).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let form_cookie = cookie_value(&page, "herd_form").expect("the sign-in page sets herd_form");
        let html = page.text().await.unwrap();
        let csrf = hidden(&html, "_csrf").expect("the sign-in form carries _csrf");
        assert_eq!(csrf, form_cookie, "double submit: the form's value is the cookie's");
        let answer = client
            .post(app.url("/ui/sign-in"))
            .header(COOKIE, format!("herd_form={form_cookie}"))
            .form(&[("_csrf", csrf.as_str()), ("username", username), ("password", password)])
            .send()
            .await
            .unwrap();
        if answer.status() != StatusCode::SEE_OTHER {
            return None;
        }
        let session = cookie_value(&answer, "herd_session").expect("a session cookie");
        let mut browser =
            Browser { base: app.url(""), client, cookie: format!("herd_session={session}"), csrf: String::new() };
        let (status, html) = browser.get("/ui/").await;
        assert_eq!(status, StatusCode::OK, "{html}");
        browser.csrf = hidden(&html, "_csrf").expect("the page's sign-out form carries _csrf");
        Some(browser)
    }

    /// The same browser (cookie and CSRF token) talking to `app`, e.g. after a restart.
    pub(crate) fn talking_to(self, app: &TestApp) -> Browser {
        Browser { base: app.url(""), ..self }
    }

    /// GETs a console page: its status and body.
    pub(crate) async fn get(&self, path: &str) -> (StatusCode, String) {
        let answer = self.client.get(format!("{}{path}", self.base)).header(COOKIE, &self.cookie).send().await.unwrap();
        (answer.status(), answer.text().await.unwrap())
    }

    /// POSTs a form with this session's CSRF token added.
    pub(crate) async fn post(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        let mut all = vec![("_csrf", self.csrf.as_str())];
        all.extend_from_slice(fields);
        self.post_raw(path, &all).await
    }

    /// POSTs a form exactly as given (no CSRF token added).
    pub(crate) async fn post_raw(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        self.client.post(format!("{}{path}", self.base)).header(COOKIE, &self.cookie).form(fields).send().await.unwrap()
    }
}

/// The value a response's `Set-Cookie` gives `name`.
pub(crate) fn cookie_value(response: &reqwest::Response, name: &str) -> Option<String> {
    set_cookie(response, name).and_then(|line| line.split(';').next()?.split_once('=').map(|(_, v)| v.to_string()))
}

/// The whole `Set-Cookie` line for `name`.
pub(crate) fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|line| line.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

/// The value of the first hidden input called `name` in `html`.
pub(crate) fn hidden(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    Some(html[start..].split('"').next()?.to_string())
}

engine_tests! {
    async fn the_root_and_every_page_send_a_stranger_to_sign_in(app) {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let root = client.get(app.url("/")).send().await.unwrap();
        assert_eq!(root.status(), StatusCode::SEE_OTHER);
        assert_eq!(root.headers()[LOCATION], "/ui/");
        let overview = client.get(app.url("/ui/")).send().await.unwrap();
        assert_eq!(overview.status(), StatusCode::SEE_OTHER);
        assert_eq!(overview.headers()[LOCATION], "/ui/sign-in");
        let devices = client.get(app.url("/ui/devices?status=online")).send().await.unwrap();
        assert_eq!(devices.headers()[LOCATION], "/ui/sign-in?next=%2Fui%2Fdevices%3Fstatus%3Donline");
        // A forged cookie is no session.
        let forged = client.get(app.url("/ui/")).header(COOKIE, "herd_session=herd_at_forged").send().await.unwrap();
        assert_eq!(forged.status(), StatusCode::SEE_OTHER);
    }

    async fn signing_in_sets_a_strict_http_only_cookie_and_wrong_passwords_are_refused(app) {
        app.post("/users", ADMIN_TOKEN, json!({ "username": "ana", "password": "a long password", "role": "admin" })).await;
        assert!(Browser::sign_in(&app, "ana", "wrong password").await.is_none());
        assert!(Browser::sign_in(&app, "nobody", "a long password").await.is_none());

        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let page = client.get(app.url("/ui/sign-in")).send().await.unwrap();
        let form = cookie_value(&page, "herd_form").unwrap();
        let answer = client
            .post(app.url("/ui/sign-in"))
            .header(COOKIE, format!("herd_form={form}"))
            .form(&[("_csrf", form.as_str()), ("username", "ana"), ("password", "a long password"), ("next", "/ui/devices")])
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::SEE_OTHER);
        assert_eq!(answer.headers()[LOCATION], "/ui/devices");
        let line = set_cookie(&answer, "herd_session").unwrap();
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
            assert!(line.contains(attribute), "{line} lacks {attribute}");
        }
        assert!(!line.contains("Secure"), "plain http: no Secure");

        // A wrong password re-renders the form (401) with the message; no session.
        let wrong = client
            .post(app.url("/ui/sign-in"))
            .header(COOKIE, format!("herd_form={form}"))
            .form(&[("_csrf", form.as_str()), ("username", "ana"), ("password", "nope nope")])
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
        assert!(set_cookie(&wrong, "herd_session").is_none());
        assert!(wrong.text().await.unwrap().contains("wrong username or password"));

        // Without the double-submitted value, sign-in is refused (login CSRF).
        let forged = client
            .post(app.url("/ui/sign-in"))
            .form(&[("_csrf", "0123456789abcdef0123456789abcdef"), ("username", "ana"), ("password", "a long password")])
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), StatusCode::FORBIDDEN);
        assert!(set_cookie(&forged, "herd_session").is_none());

        // A return address off the console is ignored.
        let away = client
            .post(app.url("/ui/sign-in"))
            .header(COOKIE, format!("herd_form={form}"))
            .form(&[("_csrf", form.as_str()), ("username", "ana"), ("password", "a long password"), ("next", "//evil.example/")])
            .send()
            .await
            .unwrap();
        assert_eq!(away.headers()[LOCATION], "/ui/");
    }

    async fn forms_without_the_sessions_csrf_token_or_from_another_site_are_refused(app) {
        let browser = Browser::signed_in(&app, "ops", "admin").await;
        let missing = browser.post_raw("/ui/sign-out", &[]).await;
        assert_eq!(missing.status(), StatusCode::FORBIDDEN);
        let wrong = browser.post_raw("/ui/sign-out", &[("_csrf", "00")]).await;
        assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
        // Another session's token does not fit this one.
        let other = Browser::signed_in(&app, "other", "admin").await;
        let mixed = browser.post_raw("/ui/sign-out", &[("_csrf", other.csrf.as_str())]).await;
        assert_eq!(mixed.status(), StatusCode::FORBIDDEN);
        // A browser that says the form came from another site.
        let cross = browser
            .client
            .post(format!("{}/ui/sign-out", browser.base))
            .header(COOKIE, &browser.cookie)
            .header("Origin", "https://evil.example")
            .form(&[("_csrf", browser.csrf.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(cross.status(), StatusCode::FORBIDDEN);
        // None of them ended the session.
        assert_eq!(browser.get("/ui/").await.0, StatusCode::OK);
    }

    async fn signing_out_ends_the_session_for_good(app) {
        let browser = Browser::signed_in(&app, "ops", "operator").await;
        let out = browser.post("/ui/sign-out", &[]).await;
        assert_eq!(out.status(), StatusCode::SEE_OTHER);
        assert!(set_cookie(&out, "herd_session").unwrap().contains("Max-Age=0"));
        // The old cookie, replayed, no longer signs anyone in.
        let (status, _) = browser.get("/ui/").await;
        assert_eq!(status, StatusCode::SEE_OTHER);
    }

    async fn a_session_and_its_forms_survive_a_restart(app) {
        let browser = Browser::signed_in(&app, "ops", "operator").await;
        let app = app.restart().await;
        let browser = browser.talking_to(&app);
        // The session is a stored credential and the CSRF key derives from the CA's secrets,
        // both kept across the restart: the page opens and a form from before it still counts.
        assert_eq!(browser.get("/ui/").await.0, StatusCode::OK);
        let out = browser.post("/ui/sign-out", &[]).await;
        assert_eq!(out.status(), StatusCode::SEE_OTHER);
        assert_eq!(browser.get("/ui/").await.0, StatusCode::SEE_OTHER);
    }

    async fn the_api_ignores_the_session_cookie(app) {
        let browser = Browser::signed_in(&app, "ops", "admin").await;
        let api = app.client.get(app.url("/devices")).header(COOKIE, &browser.cookie).send().await.unwrap();
        assert_eq!(api.status(), StatusCode::UNAUTHORIZED);
    }

    async fn set_up_turns_the_admin_token_into_a_user_with_a_password(app) {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let page = client.get(app.url("/ui/setup")).send().await.unwrap();
        let form = cookie_value(&page, "herd_form").unwrap();
        let post = |fields: Vec<(&'static str, String)>| {
            let mut all = vec![("_csrf", form.clone())];
            all.extend(fields);
            client.post(app.url("/ui/setup")).header(COOKIE, format!("herd_form={form}")).form(&all).send()
        };
        let bad_token = post(vec![
            ("token", "herd_at_nothing".into()),
            ("username", "first".into()),
            ("password", "a long password".into()),
            ("confirm", "a long password".into()),
        ])
        .await
        .unwrap();
        assert_eq!(bad_token.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(bad_token.text().await.unwrap().contains("unknown, expired or revoked"));
        let viewer = app.api_token(ADMIN_TOKEN, "viewer").await;
        let weak = post(vec![
            ("token", viewer),
            ("username", "first".into()),
            ("password", "a long password".into()),
            ("confirm", "a long password".into()),
        ])
        .await
        .unwrap();
        assert_eq!(weak.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let mismatch = post(vec![
            ("token", ADMIN_TOKEN.into()),
            ("username", "first".into()),
            ("password", "a long password".into()),
            ("confirm", "another password".into()),
        ])
        .await
        .unwrap();
        assert_eq!(mismatch.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let users = expect_json(app.get("/users", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(users["items"].as_array().unwrap().len(), 0, "nothing was created by the failures");

        let ok = post(vec![
            ("token", ADMIN_TOKEN.into()),
            ("username", "first".into()),
            ("password", "a long password".into()),
            ("confirm", "a long password".into()),
        ])
        .await
        .unwrap();
        assert_eq!(ok.status(), StatusCode::SEE_OTHER);
        assert!(cookie_value(&ok, "herd_session").is_some());
        // The user signs in with the password from now on.
        assert!(Browser::sign_in(&app, "first", "a long password").await.is_some());
    }

    async fn the_device_list_filters_pages_and_hides_other_tenants(app) {
        for i in 0..55 {
            let tag = if i % 5 == 0 { "lobby" } else { "shop" };
            let body = json!({ "name": format!("screen-{i:02}"), "serialNumber": format!("SN-{i:02}"), "tags": [tag] });
            expect_json(app.post("/devices", ADMIN_TOKEN, body).await, StatusCode::CREATED).await;
        }
        let (_, other_admin) = app.create_tenant("other").await;
        expect_json(app.post("/devices", &other_admin, json!({ "name": "foreign-screen" })).await, StatusCode::CREATED).await;

        let browser = Browser::signed_in(&app, "viewer", "viewer").await;
        let (status, first) = browser.get("/ui/devices").await;
        assert_eq!(status, StatusCode::OK);
        assert!(first.contains("screen-00") && first.contains("screen-49"));
        assert!(!first.contains("screen-50"), "50 a page");
        assert!(!first.contains("foreign-screen"));
        let next = first.split("rel=\"next\"").next().unwrap().rsplit("href=\"").next().unwrap().split('"').next().unwrap();
        let (_, second) = browser.get(&next.replace("&amp;", "&")).await;
        assert!(second.contains("screen-54") && !second.contains("screen-00"));

        let (_, lobby) = browser.get("/ui/devices?tag=lobby").await;
        assert_eq!(lobby.matches("/ui/devices/").count(), 11, "{lobby}");
        let (_, search) = browser.get("/ui/devices?q=SN-07").await;
        assert!(search.contains("screen-07") && !search.contains("screen-08"));
        let (_, none) = browser.get("/ui/devices?q=foreign").await;
        assert!(none.contains("No device matches these filters"));
        let (status, bad) = browser.get("/ui/devices?status=sideways").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(bad.contains("must be online or offline"));
    }

    async fn pages_carry_a_strict_content_security_policy(app) {
        let browser = Browser::signed_in(&app, "ops", "admin").await;
        let answer = browser.client.get(format!("{}/ui/", browser.base)).header(COOKIE, &browser.cookie).send().await.unwrap();
        let csp = answer.headers()["content-security-policy"].to_str().unwrap().to_string();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(answer.headers()["cache-control"], "no-store");
        let html = answer.text().await.unwrap();
        assert!(!html.contains("<script>") && !html.contains(" style="), "no inline script or style");
    }
}
