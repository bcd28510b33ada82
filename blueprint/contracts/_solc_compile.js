// Reads a solc standard-JSON input on stdin, compiles it with the solc package found under
// the directory given as argv[2] (node_modules), writes the standard-JSON output on stdout.
const path = require("path");
const solc = require(path.join(process.argv[2], "solc"));
let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const output = solc.compile(input);
  process.stdout.write(JSON.stringify({ version: solc.version(), output: JSON.parse(output) }));
});
