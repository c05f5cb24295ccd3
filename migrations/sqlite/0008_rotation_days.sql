-- Redemption attempts per UTC day (twin file in the other backend's folder), kept beside
-- rotation_attempts so the overview's 7-day chart reads 7 rows instead of scanning a week of
-- attempts — 100,000 of them a week at 100,000 partners (107 ms on SQLite; 1 ms now).
CREATE TABLE rotation_days (
    day       BIGINT PRIMARY KEY,   -- Unix seconds / 86400 (UTC)
    successes BIGINT NOT NULL,
    failures  BIGINT NOT NULL
);

INSERT INTO rotation_days (day, successes, failures)
SELECT at / 86400,
       COUNT(CASE WHEN outcome = 'success' THEN 1 END),
       COUNT(CASE WHEN outcome <> 'success' THEN 1 END)
FROM rotation_attempts
GROUP BY at / 86400;
