package upload

import "sync"

// putCacheInfo accepts nix-cache-info when it agrees with the configuration:
// yet; beyond it, a NAR is read again when its narinfo arrives.
const maxPendingNars = 100000

// pendingNars remembers what uploaded NARs hold until their narinfo comes.
type pendingNars struct {
	mu   sync.Mutex
	nars map[string]NarMeta
}

func (p *pendingNars) put(url string, meta NarMeta) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.nars == nil {
		p.nars = make(map[string]NarMeta)
	}
	if len(p.nars) >= maxPendingNars {
		for old := range p.nars {
			delete(p.nars, old)
			break
		}
	}
	p.nars[url] = meta
}

func (p *pendingNars) get(url string) (NarMeta, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	meta, ok := p.nars[url]
	return meta, ok
}

func (p *pendingNars) delete(url string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.nars, url)
}
