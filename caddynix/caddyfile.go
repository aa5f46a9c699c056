package caddynix

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/cargoxx-pkgs/runner/internal/caddyutil"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("nix_cache", parseCaddyfile)
	// The cache answers its own requests, so it goes where file_server would.
	httpcaddyfile.RegisterDirectiveOrder("nix_cache", httpcaddyfile.Before, "file_server")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := new(Handler)
	if err := handler.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return handler, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	nix_cache [<matcher>] {
//	    name            <name>
//	    url             <url>
//	    root            <directory>
//	    secret_key_file <file>        # repeatable: every key signs
//	    generate_key
//	    store_dir       <path>
//	    priority        <integer>
//	    want_mass_query <true|false>
//	    upload {
//	        token        <token> [ref]  # repeatable; ref: an overlay's
//	        token_file   <file> [ref]   # repeatable
//	        trusted_refs <pattern>...   # besides the default branch
//	        max_nar_size <size>      # bytes, or 8GiB, 500MB, …
//	        max_log_size <size>      # default 64MiB
//	    }
//	    retention {
//	        max_size <size>          # e.g. 50GiB
//	        max_age  <duration>      # e.g. 90d
//	        min_age  <duration>      # default 1h
//	        interval <duration>      # default 1h
//	        overlay_max_age <duration> # default 7d
//	    }
//	    index_file      <file>
//	    store <dir> {                 # serve a live Nix store too
//	        database    <file>        # default: <dir>/../var/nix/db/db.sqlite
//	        log_dir     <dir>         # default: <dir>/../var/log/nix/drvs
//	        compression <none|zstd>   # default: none
//	    }
//	    upstream <url> {              # repeatable, asked in order
//	        trusted_public_key <key>  # repeatable, at least one
//	        keep                      # store what is fetched
//	        sign                      # add the cache's signatures
//	        timeout <duration>        # default 5s
//	    }
//	    storage s3 {                  # instead of root
//	        bucket                 <name>
//	        prefix                 <prefix>
//	        endpoint               <url>
//	        region                 <region>
//	        path_style
//	        access_key_id          <id>
//	        secret_access_key      <secret>
//	        secret_access_key_file <file>
//	        part_size              <size>
//	        abandon_uploads_after  <duration>
//	        redirect               <duration>
//	    }
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	textOptions := map[string]*string{"name": &h.Name, "url": &h.URL, "root": &h.Root, "store_dir": &h.StoreDir, "index_file": &h.IndexFile}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		option := d.Val()
		if seen[option] && option != "secret_key_file" && option != "upstream" {
			return d.Errf("nix_cache: %s given more than once", option)
		}
		seen[option] = true
		if target, ok := textOptions[option]; ok {
			value, err := caddyutil.SingleArg(d)
			if err != nil {
				return err
			}
			*target = value
			continue
		}
		switch option {
		case "secret_key_file":
			value, err := caddyutil.SingleArg(d)
			if err != nil {
				return err
			}
			h.SecretKeyFiles = append(h.SecretKeyFiles, value)
		case "upload":
			if err := h.unmarshalUpload(d); err != nil {
				return err
			}
		case "retention":
			if err := h.unmarshalRetention(d); err != nil {
				return err
			}
		case "storage":
			if err := h.unmarshalStorage(d); err != nil {
				return err
			}
		case "store":
			if err := h.unmarshalLiveStore(d); err != nil {
				return err
			}
		case "upstream":
			if err := h.unmarshalUpstream(d); err != nil {
				return err
			}
		case "generate_key":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.GenerateKey = true
		case "priority":
			value, err := caddyutil.SingleArg(d)
			if err != nil {
				return err
			}
			priority, err := strconv.Atoi(value)
			if err != nil {
				return d.Errf("nix_cache: priority %q is not an integer", value)
			}
			h.Priority = &priority
		case "want_mass_query":
			value, err := caddyutil.SingleArg(d)
			if err != nil {
				return err
			}
			want, err := strconv.ParseBool(value)
			if err != nil {
				return d.Errf("nix_cache: want_mass_query %q is not true or false", value)
			}
			h.WantMassQuery = &want
		default:
			return d.Errf("nix_cache: unknown option %q", option)
		}
	}
	return nil
}

// unmarshalUpload parses the upload block.
func (h *Handler) unmarshalUpload(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	h.Upload = new(UploadConfig)
	sizes := map[string]*int64{"max_nar_size": &h.Upload.MaxNarSize, "max_log_size": &h.Upload.MaxLogSize}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		option := d.Val()
		switch option {
		case "trusted_refs":
			patterns := d.RemainingArgs()
			if len(patterns) == 0 {
				return d.Errf("nix_cache: trusted_refs needs at least one pattern, e.g. main release/* refs/tags/v*")
			}
			h.Upload.TrustedRefs = append(h.Upload.TrustedRefs, patterns...)
			continue
		case "token", "token_file":
			args := d.RemainingArgs()
			if len(args) == 0 || len(args) > 2 || (len(args) == 2 && args[1] != "ref" && args[1] != "trusted") {
				return d.Errf("nix_cache: %s takes a value and, optionally, its tier: %s <value> [trusted|ref]", option, option)
			}
			ref := len(args) == 2 && args[1] == "ref"
			target := map[[2]bool]*[]string{
				{false, false}: &h.Upload.Tokens, {false, true}: &h.Upload.RefTokens,
				{true, false}: &h.Upload.TokenFiles, {true, true}: &h.Upload.RefTokenFiles,
			}[[2]bool{option == "token_file", ref}]
			*target = append(*target, args[0])
			continue
		}
		value, err := caddyutil.SingleArg(d)
		if err != nil {
			return err
		}
		if target, ok := sizes[option]; ok {
			if seen[option] {
				return d.Errf("nix_cache: %s given more than once", option)
			}
			seen[option] = true
			if *target, err = parseSize(d, option, value); err != nil {
				return err
			}
			continue
		}
		return d.Errf("nix_cache: unknown upload option %q", option)
	}
	return nil
}

// unmarshalRetention parses the retention block.
func (h *Handler) unmarshalRetention(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	h.Retention = new(RetentionConfig)
	durations := map[string]*caddy.Duration{"max_age": &h.Retention.MaxAge, "interval": &h.Retention.Interval, "overlay_max_age": &h.Retention.OverlayMaxAge}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		option := d.Val()
		value, err := caddyutil.SingleArg(d)
		if err != nil {
			return err
		}
		if seen[option] {
			return d.Errf("nix_cache: retention: %s given more than once", option)
		}
		seen[option] = true
		if option == "min_age" {
			// 0 is allowed: nothing is protected by age.
			dur, err := caddy.ParseDuration(value)
			if err != nil || dur < 0 {
				return d.Errf("nix_cache: retention: min_age %q is not a duration such as 1h, or 0", value)
			}
			minAge := caddy.Duration(dur)
			h.Retention.MinAge = &minAge
			continue
		}
		if target, ok := durations[option]; ok {
			dur, err := caddy.ParseDuration(value)
			if err != nil || dur <= 0 {
				return d.Errf("nix_cache: retention: %s %q is not a positive duration such as 90d or 1h", option, value)
			}
			*target = caddy.Duration(dur)
			continue
		}
		if option != "max_size" {
			return d.Errf("nix_cache: unknown retention option %q (max_size, max_age, min_age, interval, overlay_max_age)", option)
		}
		if h.Retention.MaxSize, err = parseSize(d, option, value); err != nil {
			return err
		}
	}
	return nil
}

// unmarshalLiveStore parses `store <dir> [{ … }]`.
func (h *Handler) unmarshalLiveStore(d *caddyfile.Dispenser) error {
	c := new(LiveStoreConfig)
	if !d.NextArg() {
		return d.Errf("nix_cache: store takes the store directory to serve, e.g. `store /nix/store`")
	}
	c.Dir = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	text := map[string]*string{"database": &c.Database, "log_dir": &c.LogDir, "compression": &c.Compression}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		option := d.Val()
		target, ok := text[option]
		if !ok {
			return d.Errf("nix_cache: unknown store option %q (database, log_dir, compression)", option)
		}
		if seen[option] {
			return d.Errf("nix_cache: store: %s given more than once", option)
		}
		seen[option] = true
		value, err := caddyutil.SingleArg(d)
		if err != nil {
			return err
		}
		*target = value
	}
	if c.Compression != "" && c.Compression != "none" && c.Compression != "zstd" {
		return d.Errf("nix_cache: store: compression %q is not none or zstd", c.Compression)
	}
	h.LiveStore = c
	return nil
}

// unmarshalUpstream parses `upstream <url> { … }`.
func (h *Handler) unmarshalUpstream(d *caddyfile.Dispenser) error {
	c := new(UpstreamConfig)
	if !d.NextArg() {
		return d.Errf("nix_cache: upstream takes the URL of a binary cache, e.g. `upstream https://cache.nixos.org { trusted_public_key … }`")
	}
	c.URL = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		option := d.Val()
		if seen[option] && option != "trusted_public_key" {
			return d.Errf("nix_cache: upstream: %s given more than once", option)
		}
		seen[option] = true
		switch option {
		case "keep", "sign":
			if d.NextArg() {
				return d.ArgErr()
			}
			*map[string]*bool{"keep": &c.Keep, "sign": &c.Sign}[option] = true
		case "trusted_public_key":
			value, err := caddyutil.SingleArg(d)
			if err != nil {
				return err
			}
			c.TrustedPublicKeys = append(c.TrustedPublicKeys, value)
		case "timeout":
			value, err := caddyutil.SingleArg(d)
			if err != nil {
				return err
			}
			timeout, err := caddy.ParseDuration(value)
			if err != nil || timeout <= 0 {
				return d.Errf("nix_cache: upstream: timeout %q is not a positive duration such as 5s", value)
			}
			c.Timeout = caddy.Duration(timeout)
		default:
			return d.Errf("nix_cache: unknown upstream option %q (trusted_public_key, keep, sign, timeout)", option)
		}
	}
	if len(c.TrustedPublicKeys) == 0 {
		return d.Errf("nix_cache: upstream %s needs trusted_public_key: the key its narinfo is signed by", c.URL)
	}
	h.Upstreams = append(h.Upstreams, c)
	return nil
}

// unmarshalStorage parses `storage s3 { … }`.
func (h *Handler) unmarshalStorage(d *caddyfile.Dispenser) error {
	if !d.NextArg() || d.Val() != "s3" {
		return d.Errf("nix_cache: storage takes a kind of storage: `storage s3 { … }`")
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	c := new(S3Config)
	text := map[string]*string{
		"bucket": &c.Bucket, "prefix": &c.Prefix, "endpoint": &c.Endpoint, "region": &c.Region,
		"access_key_id": &c.AccessKeyID, "secret_access_key": &c.SecretAccessKey, "secret_access_key_file": &c.SecretAccessKeyFile,
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		option := d.Val()
		if seen[option] {
			return d.Errf("nix_cache: storage s3: %s given more than once", option)
		}
		seen[option] = true
		if option == "path_style" {
			if d.NextArg() {
				return d.ArgErr()
			}
			c.PathStyle = true
			continue
		}
		value, err := caddyutil.SingleArg(d)
		if err != nil {
			return err
		}
		if target, ok := text[option]; ok {
			*target = value
			continue
		}
		switch option {
		case "part_size":
			if c.PartSize, err = parseSize(d, option, value); err != nil {
				return err
			}
		case "abandon_uploads_after", "redirect", "gc_grace":
			age, err := caddy.ParseDuration(value)
			if err != nil || age <= 0 {
				return d.Errf("nix_cache: storage s3: %s %q is not a positive duration such as 6h", option, value)
			}
			*map[string]*caddy.Duration{"redirect": &c.Redirect, "abandon_uploads_after": &c.AbandonUploadsAfter, "gc_grace": &c.GCGrace}[option] = caddy.Duration(age)
		default:
			return d.Errf("nix_cache: unknown storage s3 option %q (bucket, prefix, endpoint, region, path_style, access_key_id, secret_access_key, secret_access_key_file, part_size, abandon_uploads_after, redirect, gc_grace)", option)
		}
	}
	if c.Bucket == "" || c.Endpoint == "" {
		return d.Errf("nix_cache: storage s3 needs a bucket and an endpoint")
	}
	h.Storage = &StorageConfig{S3: c}
	return nil
}

// parseSize reads a positive size in bytes, or with a unit such as 8GiB.
func parseSize(d *caddyfile.Dispenser, option, value string) (int64, error) {
	size, ok := caddyutil.ByteSize(value)
	if !ok || size == 0 {
		return 0, d.Errf("nix_cache: %s %q is not a positive size such as 8GiB", option, value)
	}
	return size, nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
