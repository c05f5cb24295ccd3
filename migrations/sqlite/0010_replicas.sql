-- Running `samvault serve` processes, so a lease whose holder died is taken back at once
-- instead of when it runs out: the redemption it interrupted is retried within the IdP's
-- rotation grace (twin file in the other backend's folder).
CREATE TABLE replicas (
    instance   TEXT PRIMARY KEY,   -- the prefix of every lease owner this process writes
    machine    TEXT,               -- kernel boot id and pid namespace (Linux), else NULL
    pid        BIGINT NOT NULL,
    process_start TEXT,            -- the process's start time in the kernel's ticks (Linux)
    started_at BIGINT NOT NULL,
    seen_at    BIGINT NOT NULL     -- last heartbeat
);
