// Parse AsyncAPI documents with the AsyncAPI project's own parser; print, for each, one line of
// JSON: whether it parsed, what it holds and its diagnostics.
// Usage: node validate.js <the directory whose node_modules has @asyncapi/parser> <document>...
"use strict";
const path = require("path");

async function main() {
  const [prefix, ...documents] = process.argv.slice(2);
  const { Parser, fromFile } = require(path.resolve(prefix, "node_modules", "@asyncapi", "parser"));
  const parser = new Parser();
  for (const document of documents) {
    await report(parser, fromFile, document);
  }
}

async function report(parser, fromFile, document) {
  const { document: parsed, diagnostics } = await fromFile(parser, document).parse();
  const severities = ["error", "warning", "info", "hint"];
  const out = {
    parsed: parsed !== undefined,
    version: parsed ? parsed.version() : null,
    channels: parsed ? parsed.channels().length : 0,
    operations: parsed ? parsed.operations().length : 0,
    messages: parsed ? parsed.components().messages().length : 0,
    diagnostics: diagnostics.map((d) => ({
      severity: severities[d.severity] || String(d.severity),
      code: d.code,
      message: d.message,
      path: d.path.join("/"),
    })),
  };
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((error) => {
  process.stdout.write(JSON.stringify({ parsed: false, crash: String(error && error.stack || error) }) + "\n");
  process.exitCode = 2;
});
