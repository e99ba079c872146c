-- Migrator: creates the apalis schema and owns everything in it, so it can run
-- `apalis-client migrate`, then apply the other roles' grants as the owner. {database}
-- is the database the apalis schema lives in.
GRANT CREATE ON DATABASE {database} TO {role};
