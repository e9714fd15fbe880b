#!/usr/bin/env python3
"""Writes a project as stacker leaves it (one layer "base": a tar base, an import directory of
N files of 8 KiB, .stacker/build.cache format 16 with its go-mtree spec) and a plan for it, in
./proj, for timing `layercache import-stacker` (docs/stacker-import.md, "Measured"):

    N=5000 python3 docs/stacker-import-measure.py && cd proj &&
    /usr/bin/time layercache import-stacker --db cache.redb --plan plan.json .stacker/build.cache
"""
import os, hashlib, base64, json, stat, platform
root=os.path.abspath('proj'); os.makedirs(root)
def w(p,data,mode):
    os.makedirs(os.path.dirname(p),exist_ok=True); open(p,'wb').write(data); os.chmod(p,mode)
pkg=os.path.join(root,'.stacker/imports/base/pkg')
N=int(os.environ.get('N','5000'))
for i in range(N):
    w(os.path.join(pkg,'d%d'%(i%50),'f%d.txt'%i), os.urandom(8192), 0o644)
w(os.path.join(root,'.stacker/layer-bases/rootfs.tar'), b'tar', 0o644)
blob=b'base blob'; bh=hashlib.sha256(blob).hexdigest(); w(os.path.join(root,'oci/blobs/sha256',bh), blob, 0o644)
def gomode(m): return '-'+''.join(c if m&(1<<(8-i)) else '-' for i,c in enumerate('rwxrwxrwx'))
def hf(p): return 'sha256:'+hashlib.sha256(open(p,'rb').read()+gomode(os.stat(p).st_mode&0o777).encode()).hexdigest()
st=os.lstat(pkg)
out=['#      keywords: type,link,uid,gid,xattr,mode,sha256digest','# .','/set type=file uid=%d gid=%d mode=0664'%(st.st_uid,st.st_gid)]
def own(p,d):
    s=os.lstat(p); kv=''
    if s.st_uid!=st.st_uid: kv+=' uid=%d'%s.st_uid
    if s.st_gid!=st.st_gid: kv+=' gid=%d'%s.st_gid
    m=s.st_mode&0o7777
    if d or m!=0o664: kv+=' mode=0%o'%m
    return kv
out.append('. type=dir'+own(pkg,True))
for d in sorted(os.listdir(pkg)):
    dp=os.path.join(pkg,d); out.append('%s type=dir%s'%(d,own(dp,True)))
    for f in sorted(os.listdir(dp)):
        fp=os.path.join(dp,f); out.append('    %s%s sha256digest=%s'%(f,own(fp,False),hashlib.sha256(open(fp,'rb').read()).hexdigest()))
    out.append('..')
out.append('..')
spec=base64.b64encode(('\n'.join(out)+'\n').encode()).decode()
osn='linux'; arch={'x86_64':'amd64','aarch64':'arm64'}[platform.machine()]
entry={"Manifests":{"tar+false":{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:"+bh,"size":len(blob)}},
 "Imports":{root+"/pkg":{"Type":1,"Hash":spec}},"OverlayDirs":{},"Name":"base",
 "Layer":{"from":{"type":"tar","url":"https://x/rootfs.tar"},"imports":[{"path":root+"/pkg"}],"run":["make"],"os":osn,"arch":arch},
 "Base":hf(os.path.join(root,'.stacker/layer-bases/rootfs.tar'))}
json.dump({"cache":{"base":entry},"version":16},open(os.path.join(root,'.stacker/build.cache'),'w'))
plan={"oci_layout":"oci","rootfs_dir":"roots","layers":{"base":{"definition":{"from":{"type":"tar","url":"https://x/rootfs.tar"},"imports":["pkg"],"run":"make"},
 "base":{"type":"tar","path":".stacker/layer-bases/rootfs.tar"},"imports":[{"key":"pkg","path":".stacker/imports/base/pkg"}]}}}
json.dump(plan,open(os.path.join(root,'plan.json'),'w'))
