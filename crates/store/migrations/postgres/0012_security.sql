-- Security (issue 15): the ids of SAML AuthnRequests already answered, so that a request is
-- answered once (a replayed one is refused). Rows expire with the request's freshness window
-- (a few minutes); every insert first removes the expired ones, so the table stays small. On
-- PostgreSQL every process shares it.
CREATE TABLE saml_request_ids (
    app_id      UUID NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    request_id  TEXT NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (app_id, request_id)
);
CREATE INDEX saml_request_ids_expiry ON saml_request_ids (expires_at);
