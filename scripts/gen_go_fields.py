#!/usr/bin/env python3
"""Derives crates/apiserver/src/go_fields.tsv (read by omit.rs) from upstream's Go types: for
each struct of the API types, the slice and map fields whose json tag lacks `omitempty`
("keep": written even when empty), and the fields Go always writes with their zero value
(non-pointer structs as {}, non-omitempty scalars). Types that encode as scalars (Time,
Quantity, IntOrString, ...) are skipped.

Usage: scripts/gen_go_fields.py API APIMACHINERY APIEXTENSIONS_APISERVER KUBE_AGGREGATOR \
           > crates/apiserver/src/go_fields.tsv
where each argument is a git directory of that kubernetes/* repository (its HEAD is read), at
the release kinglet serves. Rows for definitions kinglet does not store (list kinds, review
kinds, types newer than the release) are then removed; omit.rs's test
`every_rule_names_a_known_field` refuses rows that name no field of kinglet's schemas.
"""
import re, subprocess, sys

if len(sys.argv) != 5:
    sys.exit(__doc__)
def ls(repo): return subprocess.check_output(["git","-C",repo,"ls-tree","-r","--name-only","HEAD"]).decode().split()
def show(repo,p): return subprocess.check_output(["git","-C",repo,"show","HEAD:"+p]).decode()
# (repo, path, go import path, definition prefix)
srcs=[]
api, apimachinery, apiextensions, aggregator = sys.argv[1:5]
for f in ls(api):
    if f.endswith("types.go") and re.match(r"[a-z]+/(v1|v2)/types.go$", f):
        d=f.rsplit("/",1)[0]
        srcs.append((api,f,"k8s.io/api/"+d,"io.k8s.api."+d.replace("/",".")))
srcs.append((apimachinery,"pkg/apis/meta/v1/types.go","k8s.io/apimachinery/pkg/apis/meta/v1","io.k8s.apimachinery.pkg.apis.meta.v1"))
for p in ["types.go","types_jsonschema.go"]:
    srcs.append((apiextensions,"pkg/apis/apiextensions/v1/"+p,"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1","io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1"))
srcs.append((aggregator,"pkg/apis/apiregistration/v1/types.go","k8s.io/kube-aggregator/pkg/apis/apiregistration/v1","io.k8s.kube-aggregator.pkg.apis.apiregistration.v1"))
structs={}   # (gopkg, name) -> list of (field, typ, tagparts, alias map)
named={}     # (gopkg,name) -> underlying
SCALARS={"string":'""',"bool":"false","int":"0","int32":"0","int64":"0","float64":"0","uint64":"0","uint32":"0","byte":"0"}
for repo,p,gopkg,pref in srcs:
    src=show(repo,p)
    imports={}
    for m in re.finditer(r'^\s*(\w+)?\s*"([^"]+)"\s*$', src.split("\n)\n")[0] if "import (" in src else "", re.M):
        alias=m.group(1) or m.group(2).rsplit("/",1)[-1]
        imports[alias]=m.group(2)
    for m in re.finditer(r"^type (\w+) (\S+)", src, re.M):
        if m.group(2)!="struct": named[(gopkg,m.group(1))]=m.group(2)
    cur=None
    for line in src.splitlines():
        s=line.strip()
        m=re.match(r"type (\w+) struct \{", s)
        if m: cur=m.group(1); structs[(gopkg,cur)]=(pref,[]); continue
        if cur and s=="}": cur=None; continue
        if not cur: continue
        m=re.match(r"(\w+)\s+(\S+)\s+`json:\"([^\"]*)\"", s)
        if not m:
            e=re.match(r"((?:\w+\.)?(\w+))\s+`json:\"([^\"]*)\"", s)
            if e: structs[(gopkg,cur)][1].append((e.group(2),e.group(1),e.group(3).split(","),imports,gopkg))
            continue
        structs[(gopkg,cur)][1].append((m.group(1),m.group(2),m.group(3).split(","),imports,gopkg))
def resolve(typ, imports, gopkg):
    if "." in typ:
        a,n=typ.split(".",1); return (imports.get(a,a),n)
    return (gopkg,typ)
SPECIAL={"Time","MicroTime","Duration","Quantity","IntOrString","RawExtension","FieldsV1","JSON","TypeMeta","ObjectMeta_"}
out=[]
def entries(key, seen=()):
    pref,fields=structs[key]
    res=[]
    for fname,typ,tag,imports,gp in fields:
        jname=tag[0]; opts=tag[1:]
        if "inline" in opts or (jname=="" and tag!=["-"]):
            k=resolve(typ.lstrip("*"),imports,gp)
            if k in structs and k not in seen and k[1] not in SPECIAL:
                res.extend(entries(k, seen+(key,)))
            continue
        if jname in ("","-"): continue
        if typ.startswith("*") or typ.startswith("[]") or typ.startswith("map["):
            if (typ.startswith("[]") and typ!="[]byte") or typ.startswith("map["):
                if "omitempty" not in opts: res.append((jname,"keep"))
            continue
        if "omitzero" in opts: continue
        k=resolve(typ,imports,gp)
        if k[1] in SPECIAL: continue
        if k in structs: res.append((jname,"{}")); continue
        under=named.get(k, typ)
        if under in SCALARS and "omitempty" not in opts: res.append((jname,SCALARS[under]))
    return res
for key,(pref,fields) in structs.items():
    for jname,what in entries(key):
        out.append((pref+"."+key[1], jname, what))
for o in sorted(set(out)): print("\t".join(o))
