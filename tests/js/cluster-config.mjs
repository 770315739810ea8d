// Prints the TOML tables every node of a cluster takes for this suite (the namespaces and
// client settings of harness.mjs's defaultConfig()), for `scripts/cluster.sh --extra`:
// scripts/test.sh runs the suite against such a cluster with HUBBUB_URL set.
import { clusterConfigToml } from './harness.mjs';

process.stdout.write(clusterConfigToml());
