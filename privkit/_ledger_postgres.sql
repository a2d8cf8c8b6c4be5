-- The privkit ledger in PostgreSQL, schema version 2 (the SQLite file's events, tables and hash chain).
-- Run by privkit.budget.init (privkit budget init URL) as a superuser, in one transaction; idempotent.
-- Everything is owned by privkit_owner, a role nobody logs in as; the steward and the researchers get
-- SELECT and EXECUTE on a few SECURITY DEFINER functions, nothing else. See privkit/_ledger_postgres.py.

DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'privkit_owner') THEN
    CREATE ROLE privkit_owner NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'privkit_steward') THEN
    CREATE ROLE privkit_steward NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'privkit_researcher') THEN
    CREATE ROLE privkit_researcher NOLOGIN;
  END IF;
END $$;
CREATE SCHEMA IF NOT EXISTS privkit AUTHORIZATION privkit_owner;
SET LOCAL ROLE privkit_owner;

-- Tables. The events (budgets, datasets, spends with their spend_scopes) carry the columns of the SQLite
-- file; dataset, institution and grp are generated from a scope, for the policies and the budget check.

CREATE TABLE IF NOT EXISTS privkit.meta (key text PRIMARY KEY, value text NOT NULL);
INSERT INTO privkit.meta VALUES ('application', 'privkit ledger'), ('schema_version', '2'),
  ('created', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')
              || ' by ' || session_user)
  ON CONFLICT (key) DO NOTHING;
CREATE TABLE IF NOT EXISTS privkit.head (  -- the chain's last event; its row lock serialises every write
  one boolean PRIMARY KEY DEFAULT true CHECK (one),
  seq bigint NOT NULL,
  hash text NOT NULL,
  origin text NOT NULL CHECK (origin IN ('empty', 'import', 'native'))
);
INSERT INTO privkit.head VALUES (true, 0, repeat('0', 64), 'empty') ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS privkit.builtin_datasets (name text PRIMARY KEY);  -- privkit.data.DATASETS
CREATE TABLE IF NOT EXISTS privkit.budgets (
  id bigint PRIMARY KEY,
  time text NOT NULL,
  scope text NOT NULL
    CHECK (scope ~ '^dataset:[A-Za-z0-9_.-]+(/institution:[A-Za-z0-9_.-]+)?(/group:[A-Za-z0-9_.-]+)?$'),
  epsilon float8 NOT NULL,
  delta float8 NOT NULL,
  actor text NOT NULL,
  reason text,
  seq bigint NOT NULL UNIQUE,
  prev text NOT NULL,
  hash text NOT NULL,
  dataset text GENERATED ALWAYS AS (substring(scope FROM '^dataset:([A-Za-z0-9_.-]+)')) STORED,
  institution text GENERATED ALWAYS AS (substring(scope FROM '/institution:([A-Za-z0-9_.-]+)')) STORED,
  grp text GENERATED ALWAYS AS (substring(scope FROM '/group:([A-Za-z0-9_.-]+)')) STORED
);
CREATE TABLE IF NOT EXISTS privkit.datasets (
  id bigint PRIMARY KEY,
  time text NOT NULL,
  name text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9_.-]+$'),
  size bigint NOT NULL CHECK (size >= 1),
  actor text NOT NULL,
  description text,
  seq bigint NOT NULL UNIQUE,
  prev text NOT NULL,
  hash text NOT NULL
);
CREATE TABLE IF NOT EXISTS privkit.spends (
  id bigint PRIMARY KEY,
  time text NOT NULL,
  noise_multiplier float8 NOT NULL,
  sample_rate float8 NOT NULL,
  steps bigint NOT NULL,
  delta float8 NOT NULL,
  accountant text NOT NULL,
  epsilon float8 NOT NULL,
  run_id text NOT NULL,
  actor text NOT NULL,
  randomness text NOT NULL CHECK (randomness ~ '^(secure|unrecorded|seeded:[0-9a-f]+)$'),
  seq bigint NOT NULL UNIQUE,
  prev text NOT NULL,
  hash text NOT NULL
);
CREATE TABLE IF NOT EXISTS privkit.spend_scopes (
  spend_id bigint NOT NULL REFERENCES privkit.spends (id),
  ord int NOT NULL,  -- the scope's place in the spend (hashed in this order)
  scope text NOT NULL
    CHECK (scope ~ '^dataset:[A-Za-z0-9_.-]+(/institution:[A-Za-z0-9_.-]+)?(/group:[A-Za-z0-9_.-]+)?$'),
  dataset text GENERATED ALWAYS AS (substring(scope FROM '^dataset:([A-Za-z0-9_.-]+)')) STORED,
  institution text GENERATED ALWAYS AS (substring(scope FROM '/institution:([A-Za-z0-9_.-]+)')) STORED,
  grp text GENERATED ALWAYS AS (substring(scope FROM '/group:([A-Za-z0-9_.-]+)')) STORED,
  PRIMARY KEY (spend_id, scope),
  UNIQUE (spend_id, ord)
);
CREATE INDEX IF NOT EXISTS spend_scopes_dataset ON privkit.spend_scopes (dataset);
-- What a charge claimed, and the database checked, for each budget it had to satisfy: the kind of patient
-- (institution and group; '' is one the ledger had not seen), the spends composed, their composed epsilon.
CREATE TABLE IF NOT EXISTS privkit.spend_checks (
  spend_id bigint NOT NULL REFERENCES privkit.spends (id),
  budget_id bigint NOT NULL REFERENCES privkit.budgets (id),
  institution text NOT NULL,
  grp text NOT NULL,
  spends bigint[] NOT NULL,
  epsilon float8 NOT NULL,
  PRIMARY KEY (spend_id, budget_id, institution, grp)
);
CREATE TABLE IF NOT EXISTS privkit.grants (  -- who may see and charge a dataset: the last row of a pair
  id bigint PRIMARY KEY,
  time text NOT NULL,
  dataset text NOT NULL,
  grantee text NOT NULL,
  granted boolean NOT NULL,
  actor text NOT NULL
);

-- Append-only: no UPDATE, DELETE or TRUNCATE, for anyone (the owner and its functions included). Only a
-- superuser can get round it (ALTER TABLE ... DISABLE TRIGGER, session_replication_role); verify() finds it.

CREATE OR REPLACE FUNCTION privkit._append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'the privkit ledger is append-only: % on % refused', TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END $$;
DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['meta', 'builtin_datasets', 'budgets', 'datasets', 'spends', 'spend_scopes',
                           'spend_checks', 'grants'] LOOP
    EXECUTE format('CREATE OR REPLACE TRIGGER %1$s_append_only BEFORE UPDATE OR DELETE ON privkit.%1$I '
                   'FOR EACH ROW EXECUTE FUNCTION privkit._append_only()', t);
    EXECUTE format('CREATE OR REPLACE TRIGGER %1$s_no_truncate BEFORE TRUNCATE ON privkit.%1$I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION privkit._append_only()', t);
  END LOOP;
END $$;
CREATE OR REPLACE FUNCTION privkit._head_moves_on() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP <> 'UPDATE' OR NEW.seq <> OLD.seq + 1 THEN
    RAISE EXCEPTION 'the head of the privkit ledger only moves on by one event: % refused', TG_OP
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER head_moves_on BEFORE UPDATE OR DELETE ON privkit.head
  FOR EACH ROW EXECUTE FUNCTION privkit._head_moves_on();
CREATE OR REPLACE TRIGGER head_no_truncate BEFORE TRUNCATE ON privkit.head
  FOR EACH STATEMENT EXECUTE FUNCTION privkit._append_only();

-- Only the SECURITY DEFINER functions set search_path (to pg_catalog, pg_temp, against objects a caller
-- would plant); the helpers they call name every object with its schema, and run in that path.

-- The canonical serialisation of privkit._hashchain, for the database to hash what it appends. _json is
-- json.dumps(s, ensure_ascii=True) and _hex is float.hex; the functions privkit._canonical(row) that put
-- them together are generated from the event dataclasses (privkit._ledger_postgres.canonical_sql).

CREATE OR REPLACE FUNCTION privkit._json(s text) RETURNS text LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
  out text := '';
  c text;
  n int;
BEGIN
  IF s ~ '^[ -~]*$' AND strpos(s, '"') = 0 AND strpos(s, '\') = 0 THEN
    RETURN '"' || s || '"';
  END IF;
  FOREACH c IN ARRAY regexp_split_to_array(s, '') LOOP
    n := ascii(c);
    out := out || CASE
      WHEN c = '"' THEN '\"'
      WHEN c = '\' THEN '\\'
      WHEN n = 10 THEN '\n'
      WHEN n = 13 THEN '\r'
      WHEN n = 9 THEN '\t'
      WHEN n = 8 THEN '\b'
      WHEN n = 12 THEN '\f'
      WHEN n BETWEEN 32 AND 126 THEN c
      WHEN n < 65536 THEN '\u' || lpad(to_hex(n), 4, '0')
      ELSE '\u' || to_hex(55296 + ((n - 65536) >> 10)) || '\u' || to_hex(56320 + ((n - 65536) & 1023))
    END;
  END LOOP;
  RETURN '"' || out || '"';
END $$;
CREATE OR REPLACE FUNCTION privkit._hex(x float8) RETURNS text LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
  bits bytea := float8send(x);  -- IEEE 754, big-endian: sign, 11 exponent bits, 52 mantissa bits
  sign text := CASE WHEN get_byte(bits, 0) >= 128 THEN '-' ELSE '' END;
  e int := ((get_byte(bits, 0) & 127) << 4) | (get_byte(bits, 1) >> 4);
  mantissa text := substr(encode(bits, 'hex'), 4);  -- 13 hex digits
BEGIN
  IF x = 'NaN'::float8 THEN RETURN 'nan'; END IF;
  IF e = 2047 THEN RETURN sign || 'inf'; END IF;
  IF e = 0 THEN
    IF mantissa = '0000000000000' THEN RETURN sign || '0x0.0p+0'; END IF;
    RETURN sign || '0x0.' || mantissa || 'p-1022';
  END IF;
  RETURN sign || '0x1.' || mantissa || 'p' || CASE WHEN e >= 1023 THEN '+' ELSE '' END || (e - 1023)::text;
END $$;
CREATE OR REPLACE FUNCTION privkit._sha256(canonical text) RETURNS text LANGUAGE sql IMMUTABLE STRICT
RETURN encode(sha256(convert_to(canonical, 'UTF8')), 'hex');

-- @canonical (the generated privkit._canonical(row) functions go here)

-- Who sees what. A steward (and a superuser) sees every dataset; anyone else the datasets granted to a role
-- they are a member of. By session_user: the login, whatever role SET ROLE or a SECURITY DEFINER function
-- took on.

CREATE OR REPLACE FUNCTION privkit.is_steward() RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
RETURN pg_has_role(session_user, 'privkit_steward', 'MEMBER');
CREATE OR REPLACE FUNCTION privkit.visible_datasets() RETURNS text[] LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$  -- NULL: every dataset
  SELECT CASE WHEN privkit.is_steward() THEN NULL
              ELSE coalesce(array_agg(DISTINCT g.dataset ORDER BY g.dataset), '{}') END
  FROM (SELECT DISTINCT ON (dataset, grantee) dataset, grantee, granted FROM privkit.grants
        ORDER BY dataset, grantee, id DESC) g
  JOIN pg_roles r ON r.rolname = g.grantee
  WHERE g.granted AND pg_has_role(session_user, r.oid, 'MEMBER')
$$;
CREATE OR REPLACE FUNCTION privkit._visible(dataset text) RETURNS boolean LANGUAGE sql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
RETURN privkit.is_steward() OR dataset = ANY (privkit.visible_datasets());
CREATE OR REPLACE FUNCTION privkit._spend_visible(spend bigint) RETURNS boolean LANGUAGE sql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$  -- on several datasets: if one is granted
  SELECT privkit.is_steward() OR EXISTS (
    SELECT 1 FROM privkit.spend_scopes x
    WHERE x.spend_id = spend AND x.dataset = ANY (privkit.visible_datasets()))
$$;
DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['budgets', 'datasets', 'spends', 'spend_scopes', 'spend_checks', 'grants'] LOOP
    EXECUTE format('ALTER TABLE privkit.%I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('DROP POLICY IF EXISTS granted ON privkit.%I', t);
  END LOOP;
END $$;
CREATE POLICY granted ON privkit.budgets FOR SELECT
  USING ((SELECT privkit.is_steward()) OR dataset = ANY ((SELECT privkit.visible_datasets())::text[]));
CREATE POLICY granted ON privkit.datasets FOR SELECT
  USING ((SELECT privkit.is_steward()) OR name = ANY ((SELECT privkit.visible_datasets())::text[]));
CREATE POLICY granted ON privkit.spends FOR SELECT
  USING ((SELECT privkit.is_steward()) OR privkit._spend_visible(id));
CREATE POLICY granted ON privkit.spend_scopes FOR SELECT
  USING ((SELECT privkit.is_steward()) OR privkit._spend_visible(spend_id));
CREATE POLICY granted ON privkit.spend_checks FOR SELECT
  USING ((SELECT privkit.is_steward()) OR privkit._spend_visible(spend_id));
CREATE POLICY granted ON privkit.grants FOR SELECT USING ((SELECT privkit.is_steward()) OR EXISTS (
  SELECT 1 FROM pg_roles r WHERE r.rolname = grantee AND pg_has_role(session_user, r.oid, 'MEMBER')));

-- The chain, checked as privkit._hashchain.first_break does, and the head row against its last event. For
-- everyone: a researcher who sees some datasets' events learns from it whether the whole chain holds, its
-- length and its head (and where it breaks), nothing of the events themselves.

CREATE OR REPLACE FUNCTION privkit.verify_chain(anchor text DEFAULT NULL)
RETURNS TABLE (events bigint, head text, anchor_seq bigint, bad_table text, bad_id bigint, bad_seq bigint,
               problem text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  h privkit.head;
  e record;
  n bigint := 0;
  last text := repeat('0', 64);
BEGIN
  SELECT * INTO h FROM privkit.head;
  IF anchor = last THEN anchor_seq := 0; END IF;
  FOR e IN
    SELECT * FROM (
      SELECT 'budgets' AS t, b.id, b.seq, b.prev, b.hash, b.time, 'budget' AS kind, privkit._canonical(b) AS c
        FROM privkit.budgets b
      UNION ALL
      SELECT 'datasets', d.id, d.seq, d.prev, d.hash, d.time, 'dataset', privkit._canonical(d)
        FROM privkit.datasets d
      UNION ALL
      SELECT 'spends', s.id, s.seq, s.prev, s.hash, s.time, 'spend', privkit._canonical(s, ARRAY(
        SELECT x.scope FROM privkit.spend_scopes x WHERE x.spend_id = s.id ORDER BY x.ord))
        FROM privkit.spends s
    ) every ORDER BY every.seq, every.time, every.kind, every.id
  LOOP
    n := n + 1;
    problem := CASE
      WHEN e.seq < n THEN
        format('its place in the chain (event %s) is taken: a row was inserted or rewritten', e.seq)
      WHEN e.seq > n THEN format('event %s before it is missing: a row was deleted', n)
      WHEN e.prev <> last THEN
        'it does not follow the event before it: rows were deleted, inserted or reordered'
      WHEN privkit._sha256(e.c) <> e.hash THEN 'its content does not match its hash (rewritten)'
    END;
    IF problem IS NOT NULL THEN
      events := n - 1; head := last; bad_table := e.t; bad_id := e.id; bad_seq := e.seq;
      RETURN NEXT;
      RETURN;
    END IF;
    IF e.hash = anchor THEN anchor_seq := e.seq; END IF;
    last := e.hash;
  END LOOP;
  events := n;
  head := last;
  IF h.seq <> n THEN
    problem := format('its head is event %s, its last event %s: events after it were deleted', h.seq, n);
  ELSIF h.hash <> last THEN
    problem := format('its head is not its last event %s: events after it were deleted, others written', n);
  END IF;
  RETURN NEXT;
END $$;

-- Writing: one SERIALIZABLE transaction holding the head's row lock, on a chain that verifies; every event
-- gets its id, time, actor (session_user), place and hash here, not from the client.

CREATE OR REPLACE FUNCTION privkit._now() RETURNS text LANGUAGE sql VOLATILE
RETURN to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"');
CREATE OR REPLACE FUNCTION privkit._lock(verify boolean) RETURNS privkit.head LANGUAGE plpgsql AS $$
DECLARE
  h privkit.head;
  v record;
BEGIN
  IF current_setting('transaction_isolation') <> 'serializable' THEN
    RAISE EXCEPTION 'a privkit ledger is written in SERIALIZABLE transactions only (BEGIN ISOLATION LEVEL '
      'SERIALIZABLE)' USING ERRCODE = 'PK000';
  END IF;
  SELECT * INTO h FROM privkit.head FOR UPDATE;  -- SERIALIZABLE: fails (40001) if another write came first
  IF verify THEN
    SELECT * INTO v FROM privkit.verify_chain();
    IF v.problem IS NOT NULL THEN
      RAISE EXCEPTION 'the ledger was changed outside privkit: % row % (event %): %', v.bad_table, v.bad_id,
        v.bad_seq, v.problem USING ERRCODE = 'PK002';
    END IF;
  END IF;
  RETURN h;
END $$;
CREATE OR REPLACE FUNCTION privkit._advance(origin text, seq bigint, hash text) RETURNS void LANGUAGE sql
BEGIN ATOMIC
  UPDATE privkit.head SET seq = _advance.seq, hash = _advance.hash, origin = _advance.origin;
END;
CREATE OR REPLACE FUNCTION privkit._known(dataset text) RETURNS boolean LANGUAGE sql STABLE
RETURN EXISTS (SELECT 1 FROM privkit.builtin_datasets b WHERE b.name = dataset)
    OR EXISTS (SELECT 1 FROM privkit.datasets d WHERE d.name = dataset);
CREATE OR REPLACE FUNCTION privkit._part(scope text, kind text) RETURNS text LANGUAGE sql IMMUTABLE
RETURN substring(scope FROM CASE kind WHEN 'dataset' THEN '^dataset:([A-Za-z0-9_.-]+)'
                                      ELSE '/' || kind || ':([A-Za-z0-9_.-]+)' END);
CREATE OR REPLACE FUNCTION privkit._overlaps(a text, b text) RETURNS boolean LANGUAGE sql IMMUTABLE
RETURN privkit._part(a, 'dataset') = privkit._part(b, 'dataset')
   AND coalesce(privkit._part(a, 'institution') = privkit._part(b, 'institution'), true)
   AND coalesce(privkit._part(a, 'group') = privkit._part(b, 'group'), true);

-- What a charge on `scopes` must satisfy, as privkit.budget.Ledger.charge decides it: for each kind of
-- patient in the scopes (each institution and group the ledger knows in that dataset, or '' for any other)
-- and each current budget on a scope containing them, the spends that touched such a patient.
CREATE OR REPLACE FUNCTION privkit._required_checks(scopes text[])
RETURNS TABLE (budget_id bigint, budget_epsilon float8, institution text, grp text, spends bigint[])
LANGUAGE sql STABLE AS $$
  WITH new AS (
    SELECT privkit._part(x, 'dataset') AS d, privkit._part(x, 'institution') AS i,
           privkit._part(x, 'group') AS g
    FROM unnest(scopes) x
  ), known AS (
    SELECT b.dataset AS d, b.institution AS i, b.grp AS g FROM privkit.budgets b
    UNION SELECT x.dataset, x.institution, x.grp FROM privkit.spend_scopes x
    UNION SELECT new.d, new.i, new.g FROM new
  ), cells AS (
    SELECT DISTINCT n.d, ci.i, cg.g FROM new n
    CROSS JOIN LATERAL (SELECT n.i AS i WHERE n.i IS NOT NULL
                        UNION SELECT k.i FROM known k WHERE n.i IS NULL AND k.d = n.d AND k.i IS NOT NULL
                        UNION SELECT '' WHERE n.i IS NULL) ci
    CROSS JOIN LATERAL (SELECT n.g AS g WHERE n.g IS NOT NULL
                        UNION SELECT k.g FROM known k WHERE n.g IS NULL AND k.d = n.d AND k.g IS NOT NULL
                        UNION SELECT '' WHERE n.g IS NULL) cg
  ), current AS (
    SELECT DISTINCT ON (b.scope) b.* FROM privkit.budgets b ORDER BY b.scope, b.id DESC
  )
  SELECT b.id, b.epsilon, c.i, c.g, ARRAY(
    SELECT DISTINCT x.spend_id FROM privkit.spend_scopes x
    WHERE x.dataset = c.d AND coalesce(x.institution, c.i) = c.i AND coalesce(x.grp, c.g) = c.g ORDER BY 1)
  FROM cells c
  JOIN current b ON b.dataset = c.d AND coalesce(b.institution, c.i) = c.i AND coalesce(b.grp, c.g) = c.g
$$;

CREATE OR REPLACE FUNCTION privkit.charge(
  scopes text[], noise_multiplier float8, sample_rate float8, steps bigint, delta float8, accountant text,
  epsilon float8, run_id text, randomness text, checks jsonb
) RETURNS privkit.spends LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
  h privkit.head := privkit._lock(true);
  s privkit.spends;
  dataset text;
  bad record;
BEGIN
  IF scopes IS NULL OR cardinality(scopes) = 0 OR EXISTS (SELECT 1 FROM unnest(scopes) x WHERE x IS NULL
      OR x !~ '^dataset:[A-Za-z0-9_.-]+(/institution:[A-Za-z0-9_.-]+)?(/group:[A-Za-z0-9_.-]+)?$')
      OR cardinality(scopes) <> (SELECT count(DISTINCT x) FROM unnest(scopes) x) THEN
    RAISE EXCEPTION 'Expected scopes=% to be distinct scopes dataset:<name>[/institution:<id>][/group:<id>]',
      scopes USING ERRCODE = 'PK003';
  END IF;
  IF NOT (noise_multiplier >= 0 AND noise_multiplier < 'Infinity' AND sample_rate > 0 AND sample_rate <= 1
          AND steps >= 0 AND delta > 0 AND delta < 1 AND epsilon >= 0 AND epsilon <= 'Infinity'
          AND accountant IN ('prv', 'rdp') AND btrim(run_id) <> ''
          AND randomness ~ '^(secure|seeded:[0-9a-f]+)$')
     OR num_nulls(noise_multiplier, sample_rate, steps, delta, accountant, epsilon, run_id, randomness) > 0
  THEN
    RAISE EXCEPTION 'Expected noise_multiplier in [0, inf), sample_rate in (0, 1], steps >= 0, delta in '
      '(0, 1), epsilon in [0, inf], accountant prv or rdp, a run_id and randomness secure or seeded:<hex>'
      USING ERRCODE = 'PK003';
  END IF;
  FOR dataset IN SELECT DISTINCT privkit._part(x, 'dataset') FROM unnest(scopes) x LOOP
    IF NOT privkit._known(dataset) THEN
      RAISE EXCEPTION 'Unknown dataset %: neither built into privkit nor registered', dataset
        USING ERRCODE = 'PK003';
    END IF;
    IF NOT privkit._visible(dataset) THEN
      RAISE EXCEPTION 'the dataset % is not granted to %', dataset, session_user
        USING ERRCODE = 'insufficient_privilege';
    END IF;
  END LOOP;
  IF randomness <> 'secure' AND EXISTS (
      SELECT 1 FROM privkit.spends o JOIN privkit.spend_scopes x ON x.spend_id = o.id, unnest(scopes) n
      WHERE o.randomness = randomness AND privkit._overlaps(x.scope, n)) THEN
    RAISE EXCEPTION 'the noise stream % was already spent on an overlapping scope', randomness
      USING ERRCODE = 'PK001';
  END IF;
  -- The client composed each (budget, kind of patient) the database requires, over exactly these spends:
  -- else the ledger changed since the client read it (or it composed something else), and it tries again.
  SELECT r.* INTO bad FROM privkit._required_checks(scopes) r WHERE NOT EXISTS (
    SELECT 1 FROM jsonb_to_recordset(checks) c(budget bigint, institution text, "group" text, spends bigint[])
    WHERE c.budget = r.budget_id AND c.institution = r.institution AND c."group" = r.grp
      AND c.spends = r.spends)
  LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'the charge did not compose the spends % for budget % (institution %, group %): the '
      'ledger changed since it was read; read it again', bad.spends, bad.budget_id,
      quote_literal(bad.institution), quote_literal(bad.grp) USING ERRCODE = 'serialization_failure';
  END IF;
  SELECT r.budget_id, r.budget_epsilon, c.epsilon INTO bad
  FROM privkit._required_checks(scopes) r
  JOIN jsonb_to_recordset(checks) c(budget bigint, institution text, "group" text, epsilon float8)
    ON c.budget = r.budget_id AND c.institution = r.institution AND c."group" = r.grp
  WHERE noise_multiplier = 0 OR NOT (c.epsilon >= 0 AND c.epsilon <= r.budget_epsilon) LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'Privacy budget % exceeded: epsilon % composed against a budget of epsilon %',
      bad.budget_id, CASE WHEN noise_multiplier = 0 THEN 'Infinity'::float8 ELSE bad.epsilon END,
      bad.budget_epsilon USING ERRCODE = 'PK001';
  END IF;
  s.id := coalesce((SELECT max(o.id) FROM privkit.spends o), 0) + 1;
  s.time := privkit._now();
  s.noise_multiplier := noise_multiplier;
  s.sample_rate := sample_rate;
  s.steps := steps;
  s.delta := delta;
  s.accountant := accountant;
  s.epsilon := epsilon;
  s.run_id := run_id;
  s.actor := session_user;
  s.randomness := randomness;
  s.seq := h.seq + 1;
  s.prev := h.hash;
  s.hash := privkit._sha256(privkit._canonical(s, scopes));
  INSERT INTO privkit.spends SELECT s.*;
  INSERT INTO privkit.spend_checks  -- before its scopes: the spends composed are those before it
  SELECT s.id, r.budget_id, r.institution, r.grp, r.spends, c.epsilon FROM privkit._required_checks(scopes) r
  JOIN jsonb_to_recordset(checks) c(budget bigint, institution text, "group" text, epsilon float8)
    ON c.budget = r.budget_id AND c.institution = r.institution AND c."group" = r.grp;
  INSERT INTO privkit.spend_scopes (spend_id, ord, scope)
  SELECT s.id, u.n, u.x FROM unnest(scopes) WITH ORDINALITY u(x, n);
  PERFORM privkit._advance('native', s.seq, s.hash);
  RETURN s;
END $$;

CREATE OR REPLACE FUNCTION privkit.set_budget(scope text, epsilon float8, delta float8, reason text)
RETURNS privkit.budgets LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
  h privkit.head := privkit._lock(true);
  b privkit.budgets;
  current privkit.budgets;
BEGIN
  IF scope IS NULL
     OR scope !~ '^dataset:[A-Za-z0-9_.-]+(/institution:[A-Za-z0-9_.-]+)?(/group:[A-Za-z0-9_.-]+)?$'
     OR NOT privkit._known(privkit._part(scope, 'dataset')) THEN
    RAISE EXCEPTION 'Unknown scope=%: dataset:<name>[/institution:<id>][/group:<id>] of a dataset built into '
      'privkit or registered', quote_literal(scope) USING ERRCODE = 'PK003';
  END IF;
  IF NOT (epsilon > 0 AND epsilon < 'Infinity' AND delta > 0 AND delta < 1) OR num_nulls(epsilon, delta) > 0
  THEN
    RAISE EXCEPTION 'Expected epsilon=% in (0, inf) and delta=% in (0, 1)', epsilon, delta
      USING ERRCODE = 'PK003';
  END IF;
  SELECT * INTO current FROM privkit.budgets o WHERE o.scope = scope ORDER BY o.id DESC LIMIT 1;
  IF FOUND AND (epsilon > current.epsilon OR delta > current.delta) AND coalesce(btrim(reason), '') = '' THEN
    RAISE EXCEPTION 'Refused to raise the budget of % without a reason', scope USING ERRCODE = 'PK003';
  END IF;
  b.id := coalesce((SELECT max(o.id) FROM privkit.budgets o), 0) + 1;
  b.time := privkit._now();
  b.scope := scope;
  b.epsilon := epsilon;
  b.delta := delta;
  b.actor := session_user;
  b.reason := reason;
  b.seq := h.seq + 1;
  b.prev := h.hash;
  b.hash := privkit._sha256(privkit._canonical(b));
  INSERT INTO privkit.budgets (id, time, scope, epsilon, delta, actor, reason, seq, prev, hash)
  VALUES (b.id, b.time, b.scope, b.epsilon, b.delta, b.actor, b.reason, b.seq, b.prev, b.hash);
  PERFORM privkit._advance('native', b.seq, b.hash);
  RETURN b;
END $$;

CREATE OR REPLACE FUNCTION privkit.register_dataset(name text, size bigint, description text)
RETURNS privkit.datasets LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
  h privkit.head := privkit._lock(true);
  d privkit.datasets;
BEGIN
  IF name IS NULL OR name !~ '^[a-z0-9_.-]+$' OR privkit._known(name) OR NOT size >= 1 THEN
    RAISE EXCEPTION 'Expected a new dataset name of a-z, 0-9, _, ., - (got %) and a size >= 1 (got %)',
      quote_nullable(name), size USING ERRCODE = 'PK003';
  END IF;
  d.id := coalesce((SELECT max(o.id) FROM privkit.datasets o), 0) + 1;
  d.time := privkit._now();
  d.name := name;
  d.size := size;
  d.actor := session_user;
  d.description := description;
  d.seq := h.seq + 1;
  d.prev := h.hash;
  d.hash := privkit._sha256(privkit._canonical(d));
  INSERT INTO privkit.datasets SELECT d.*;
  PERFORM privkit._advance('native', d.seq, d.hash);
  RETURN d;
END $$;

-- Grants: who may see and charge a dataset; rows of their own, outside the chain, append-only too.
CREATE OR REPLACE FUNCTION privkit.grant_dataset(dataset text, grantee text, granted boolean DEFAULT true)
RETURNS privkit.grants LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
  h privkit.head := privkit._lock(false);
  g privkit.grants;
BEGIN
  IF NOT privkit._known(dataset) THEN
    RAISE EXCEPTION 'Unknown dataset %: neither built into privkit nor registered', quote_nullable(dataset)
      USING ERRCODE = 'PK003';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = grantee) THEN
    RAISE EXCEPTION 'No database role %: create it first (CREATE ROLE ... LOGIN IN ROLE privkit_researcher)',
      quote_nullable(grantee) USING ERRCODE = 'PK003';
  END IF;
  g.id := coalesce((SELECT max(o.id) FROM privkit.grants o), 0) + 1;
  g.time := privkit._now();
  g.dataset := dataset;
  g.grantee := grantee;
  g.granted := granted;
  g.actor := session_user;
  INSERT INTO privkit.grants SELECT g.*;
  RETURN g;
END $$;

-- Moving a ledger in: its events as they were (time, actor, place, hash), into a ledger that has had no
-- events of its own, each one the next link of the chain and hashing to its recorded hash.
CREATE OR REPLACE FUNCTION privkit._import_head(seq bigint, prev text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  h privkit.head := privkit._lock(false);
BEGIN
  IF h.origin = 'native' THEN
    RAISE EXCEPTION 'events are imported into a new ledger only; this one has % events of its own', h.seq
      USING ERRCODE = 'PK003';
  END IF;
  IF seq <> h.seq + 1 OR prev <> h.hash THEN
    RAISE EXCEPTION 'an imported event must extend the chain: event % after %, got event % after %',
      h.seq + 1, h.hash, seq, prev USING ERRCODE = 'PK003';
  END IF;
END $$;
CREATE OR REPLACE FUNCTION privkit._imported(hash text, computed text, seq bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  IF hash <> computed THEN
    RAISE EXCEPTION 'imported event % does not hash to its recorded hash % (but to %)', seq, hash, computed
      USING ERRCODE = 'PK002';
  END IF;
  PERFORM privkit._advance('import', seq, hash);
END $$;
CREATE OR REPLACE FUNCTION privkit.import_budget(
  id bigint, "time" text, scope text, epsilon float8, delta float8, actor text, reason text, seq bigint,
  prev text, hash text
) RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  b privkit.budgets;
BEGIN
  PERFORM privkit._import_head(seq, prev);
  INSERT INTO privkit.budgets (id, time, scope, epsilon, delta, actor, reason, seq, prev, hash)
  VALUES (id, "time", scope, epsilon, delta, actor, reason, seq, prev, hash) RETURNING * INTO b;
  PERFORM privkit._imported(hash, privkit._sha256(privkit._canonical(b)), seq);
END $$;
CREATE OR REPLACE FUNCTION privkit.import_dataset(
  id bigint, "time" text, name text, size bigint, actor text, description text, seq bigint, prev text,
  hash text
) RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  d privkit.datasets;
BEGIN
  PERFORM privkit._import_head(seq, prev);
  INSERT INTO privkit.datasets VALUES (id, "time", name, size, actor, description, seq, prev, hash)
  RETURNING * INTO d;
  PERFORM privkit._imported(hash, privkit._sha256(privkit._canonical(d)), seq);
END $$;
CREATE OR REPLACE FUNCTION privkit.import_spend(
  id bigint, "time" text, scopes text[], noise_multiplier float8, sample_rate float8, steps bigint,
  delta float8, accountant text, epsilon float8, run_id text, actor text, randomness text, seq bigint,
  prev text, hash text
) RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  s privkit.spends;
BEGIN
  PERFORM privkit._import_head(seq, prev);
  INSERT INTO privkit.spends VALUES (id, "time", noise_multiplier, sample_rate, steps, delta, accountant,
    epsilon, run_id, actor, randomness, seq, prev, hash) RETURNING * INTO s;
  INSERT INTO privkit.spend_scopes (spend_id, ord, scope)
  SELECT s.id, u.n, u.x FROM unnest(scopes) WITH ORDINALITY u(x, n);
  PERFORM privkit._imported(hash, privkit._sha256(privkit._canonical(s, scopes)), seq);
END $$;

-- Privileges: reading, and the functions of each role; no INSERT, UPDATE, DELETE or TRUNCATE for anyone.
REVOKE ALL ON ALL TABLES IN SCHEMA privkit FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA privkit FROM PUBLIC;
REVOKE ALL ON SCHEMA privkit FROM PUBLIC;
GRANT USAGE ON SCHEMA privkit TO privkit_steward, privkit_researcher;
GRANT SELECT ON privkit.meta, privkit.builtin_datasets, privkit.budgets, privkit.datasets, privkit.spends,
  privkit.spend_scopes, privkit.spend_checks, privkit.grants TO privkit_steward, privkit_researcher;
GRANT EXECUTE ON FUNCTION privkit.is_steward(), privkit.visible_datasets(), privkit._visible(text),
  privkit._spend_visible(bigint), privkit.verify_chain(text) TO privkit_steward, privkit_researcher;
GRANT EXECUTE ON FUNCTION
  privkit.charge(text[], float8, float8, bigint, float8, text, float8, text, text, jsonb)
  TO privkit_researcher;
GRANT EXECUTE ON FUNCTION privkit.set_budget(text, float8, float8, text),
  privkit.register_dataset(text, bigint, text), privkit.grant_dataset(text, text, boolean),
  privkit.import_budget(bigint, text, text, float8, float8, text, text, bigint, text, text),
  privkit.import_dataset(bigint, text, text, bigint, text, text, bigint, text, text),
  privkit.import_spend(bigint, text, text[], float8, float8, bigint, float8, text, float8, text, text, text,
                       bigint, text, text)
  TO privkit_steward;
