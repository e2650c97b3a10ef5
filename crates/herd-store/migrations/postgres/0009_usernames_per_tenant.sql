-- Usernames are unique within a tenant, no longer across the platform (security issue,
-- finding 10): with one global namespace, a tenant could find out which names another tenant
-- uses (409 on create) and take a name first. Login names the tenant (`POST /auth/login`
-- `{tenant, username, password}`), so a username need only be unique inside its tenant.

DROP INDEX users_username_uq;
CREATE UNIQUE INDEX users_tenant_username_uq ON users (tenant_id, username);
