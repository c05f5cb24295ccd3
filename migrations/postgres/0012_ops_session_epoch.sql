-- A session epoch per ops user (twin file in the other backend's folder). A dashboard session
-- carries the epoch it was signed in under; a password change or a disable increments it, so
-- every other session of that user is refused at its next request.
ALTER TABLE ops_users ADD COLUMN session_epoch BIGINT NOT NULL DEFAULT 0;
