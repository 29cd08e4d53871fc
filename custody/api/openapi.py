"""`GET /api/v1/openapi.json` and `GET /api/v1/docs`, a small self-contained explorer.

The explorer loads nothing from outside (no CDN): one HTML page with inline script that
reads the document, lists every operation with a form for its parameters, and sends the
request with the token typed in the page.
"""

from __future__ import annotations

import functools
from typing import Any

from flask import Blueprint, Response

from custody.openapi_spec import build_spec

bp = Blueprint("openapi", __name__)


@functools.cache
def _spec() -> dict[str, Any]:
    return build_spec()


@bp.get("/openapi.json")
def openapi_json() -> dict[str, Any]:
    return _spec()


EXPLORER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'">
<title>ChainCloud custody API explorer</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:70em}
.op{border:1px solid #ccc;border-radius:6px;margin:.6em 0;padding:.5em .8em}
.m{font-weight:bold;display:inline-block;width:4em}.get{color:#16a}.post{color:#a61}
pre{background:#f6f6f6;padding:.5em;overflow:auto;max-height:25em}
label{display:block;margin:.2em 0}input{font-family:monospace;min-width:30em}
</style></head><body>
<h1>ChainCloud custody API</h1>
<p>Base path <code>/api/v1/open</code>; document <a href="openapi.json">openapi.json</a>.</p>
<label>token <input id="token" type="password" autocomplete="off"></label>
<div id="ops">loading...</div>
<script>
"use strict";
function el(tag, attrs, text){const e=document.createElement(tag);
 for(const k in (attrs||{})) e.setAttribute(k, attrs[k]); if(text) e.textContent=text; return e;}
function resolve(spec, s){ if(s && s.$ref){ const n=s.$ref.split('/').pop();
 return spec.components.schemas[n]; } return s||{}; }
fetch('openapi.json').then(r=>r.json()).then(spec=>{
 const root=document.getElementById('ops'); root.textContent='';
 const base=spec.servers[0].url;
 for(const path in spec.paths){ for(const method in spec.paths[path]){
  const op=spec.paths[path][method]; const box=el('div',{'class':'op'});
  const head=el('div'); head.appendChild(el('span',{'class':'m '+method},method.toUpperCase()));
  head.appendChild(el('code',{},path)); head.appendChild(el('span',{},' - '+op.summary));
  box.appendChild(head); const form=el('form'); const fields=[];
  if(op.description) box.appendChild(el('p',{},op.description));
  for(const p of (op.parameters||[])){ const l=el('label',{},p.name+' ('+p.in+') ');
   const i=el('input',{name:p.name,placeholder:String(p.example??'')}); l.appendChild(i);
   l.appendChild(el('small',{},' '+(p.description||''))); form.appendChild(l);
   fields.push([p,i]); }
  let bodyFields=[];
  if(op.requestBody){ const sch=resolve(spec,
    op.requestBody.content['application/x-www-form-urlencoded'].schema);
   for(const n in (sch.properties||{})){ const f=sch.properties[n];
    const l=el('label',{},n+' (form or JSON) ');
    const i=el('input',{name:n,placeholder:String(f.example??'')}); l.appendChild(i);
    const unit=f['x-unit']?' ['+f['x-unit']+']':'';
    l.appendChild(el('small',{'class':'field-doc'},' '+(f.description||'')+unit));
    form.appendChild(l); bodyFields.push([n,i]); } }
  const errs=Object.keys(op.responses||{}).filter(s=>s!=='200').join(', ');
  box.appendChild(el('div',{},'error statuses: '+errs));
  const go=el('button',{type:'submit'},'send'); form.appendChild(go);
  const out=el('pre'); form.appendChild(out);
  form.addEventListener('submit', ev=>{ ev.preventDefault(); let url=base+path; const q=[];
   for(const [p,i] of fields){ if(p.in==='path') url=url.replace('{'+p.name+'}',
     encodeURIComponent(i.value)); else if(i.value) q.push(encodeURIComponent(p.name)+'='+
     encodeURIComponent(i.value)); }
   if(q.length) url+='?'+q.join('&');
   const init={method:method.toUpperCase(),
     headers:{'token':document.getElementById('token').value}};
   if(bodyFields.length){ const b=new URLSearchParams();
    for(const [n,i] of bodyFields) if(i.value) b.append(n,i.value); init.body=b; }
   out.textContent='...';
   fetch(url,init).then(r=>r.text().then(t=>{ let s=t;
     try{ s=JSON.stringify(JSON.parse(t),null,2); }catch(e){}
     out.textContent='HTTP '+r.status+'\\n'+s; })).catch(e=>{ out.textContent=String(e); });
  });
  box.appendChild(form); root.appendChild(box); } }
 const codes=el('table',{id:'error-codes'}); const hr=el('tr');
 for(const h of ['code','HTTP','name','meaning']) hr.appendChild(el('th',{},h));
 codes.appendChild(hr);
 for(const c of (spec['x-error-codes']||[])){ const tr=el('tr');
  for(const v of [c.code,c.status,c.name,c.meaning]) tr.appendChild(el('td',{},String(v)));
  codes.appendChild(tr); }
 root.appendChild(el('h2',{},'Error codes')); root.appendChild(codes);
}).catch(e=>{ document.getElementById('ops').textContent='cannot load the document: '+e; });
</script></body></html>
"""


@bp.get("/docs")
def explorer() -> Response:
    return Response(EXPLORER, mimetype="text/html")
