package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// registryStore reads an image from a registry over the distribution API, anonymously (with the
// anonymous bearer token a registry may ask for). Plain HTTP unless the reference says https://.
type registryStore struct {
	base, repo, ref string
	client          *http.Client
	token           string
	manifest        map[digest.Digest][]byte // the root manifest, as fetched by tag
}

func newRegistryStore(s string) (*registryStore, error) {
	scheme := "http"
	if strings.HasPrefix(s, "https://") {
		scheme, s = "https", strings.TrimPrefix(s, "https://")
	} else {
		s = strings.TrimPrefix(s, "http://")
	}
	slash := strings.Index(s, "/")
	if slash <= 0 {
		return nil, fmt.Errorf("%q is neither a directory nor HOST[:PORT]/REPO[:TAG|@DIGEST]", s)
	}
	host, rest := s[:slash], s[slash+1:]
	repo, ref := rest, "latest"
	if at := strings.Index(rest, "@"); at >= 0 {
		repo, ref = rest[:at], rest[at+1:]
		if _, err := digest.Parse(ref); err != nil {
			return nil, fmt.Errorf("reference %q: %v", s, err)
		}
	} else if colon := strings.LastIndex(rest, ":"); colon > strings.LastIndex(rest, "/") {
		repo, ref = rest[:colon], rest[colon+1:]
	}
	if repo == "" || ref == "" {
		return nil, fmt.Errorf("reference %q: empty repository or tag", s)
	}
	return &registryStore{base: scheme + "://" + host, repo: repo, ref: ref, client: &http.Client{Timeout: 10 * time.Minute}}, nil
}

func (s *registryStore) tocImage() (store, string, error) {
	if strings.HasPrefix(s.ref, "sha256:") {
		return nil, "", fmt.Errorf("the image is referenced by digest: the snapshotter finds the TOC image by tag (TAG%s)", tocImageSuffix)
	}
	t := &registryStore{base: s.base, repo: s.repo, ref: s.ref + tocImageSuffix, client: s.client, token: s.token}
	return t, s.base + "/" + s.repo + ":" + t.ref, nil
}

var challengeParam = regexp.MustCompile(`(\w+)="([^"]*)"`)

// get does one GET, fetching an anonymous bearer token when the registry answers 401 with a challenge.
func (s *registryStore) get(u, accept string) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		req, err := http.NewRequest(http.MethodGet, u, nil)
		if err != nil {
			return nil, err
		}
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		if s.token != "" {
			req.Header.Set("Authorization", "Bearer "+s.token)
		}
		resp, err := s.client.Do(req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode == http.StatusUnauthorized && attempt == 0 {
			challenge := resp.Header.Get("WWW-Authenticate")
			resp.Body.Close()
			if err := s.fetchToken(challenge); err != nil {
				return nil, fmt.Errorf("GET %s: 401, and no anonymous token: %v", u, err)
			}
			continue
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
		}
		return resp, nil
	}
}

func (s *registryStore) fetchToken(challenge string) error {
	if !strings.HasPrefix(strings.ToLower(challenge), "bearer ") {
		return fmt.Errorf("challenge %q is not Bearer", challenge)
	}
	params := map[string]string{}
	for _, m := range challengeParam.FindAllStringSubmatch(challenge, -1) {
		params[strings.ToLower(m[1])] = m[2]
	}
	realm, err := url.Parse(params["realm"])
	if err != nil || params["realm"] == "" {
		return fmt.Errorf("challenge %q has no realm", challenge)
	}
	q := realm.Query()
	if params["service"] != "" {
		q.Set("service", params["service"])
	}
	scope := params["scope"]
	if scope == "" {
		scope = "repository:" + s.repo + ":pull"
	}
	q.Set("scope", scope)
	realm.RawQuery = q.Encode()
	resp, err := s.client.Get(realm.String())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("token endpoint: %s", resp.Status)
	}
	var tok struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&tok); err != nil {
		return err
	}
	s.token = tok.Token
	if s.token == "" {
		s.token = tok.AccessToken
	}
	return nil
}

const manifestAccept = mtOCIIndex + ", " + mtOCIManifest + ", " + mtDockerList + ", " + mtDockerManifest

func (s *registryStore) roots() ([]ocispec.Descriptor, error) {
	resp, err := s.get(s.base+"/v2/"+s.repo+"/manifests/"+s.ref, manifestAccept)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestBytes+1))
	if err != nil {
		return nil, err
	}
	d := ocispec.Descriptor{MediaType: strings.TrimSpace(strings.Split(resp.Header.Get("Content-Type"), ";")[0]), Digest: digest.FromBytes(b), Size: int64(len(b))}
	if strings.HasPrefix(s.ref, "sha256:") && digest.Digest(s.ref) != d.Digest {
		return nil, fmt.Errorf("manifest %s: content hashes to %s", s.ref, d.Digest)
	}
	if hd := resp.Header.Get("Docker-Content-Digest"); hd != "" && digest.Digest(hd) != d.Digest {
		return nil, fmt.Errorf("manifest: Docker-Content-Digest %s, content hashes to %s", hd, d.Digest)
	}
	s.manifest = map[digest.Digest][]byte{d.Digest: b}
	return []ocispec.Descriptor{d}, nil
}

func (s *registryStore) fetch(d ocispec.Descriptor) ([]byte, error) {
	if b, ok := s.manifest[d.Digest]; ok {
		return b, nil
	}
	if d.Size > maxManifestBytes {
		return nil, fmt.Errorf("%s: %d bytes is too big for a manifest or config", d.Digest, d.Size)
	}
	kind := "blobs"
	if d.MediaType == mtOCIIndex || d.MediaType == mtOCIManifest || d.MediaType == mtDockerList || d.MediaType == mtDockerManifest {
		kind = "manifests"
	}
	resp, err := s.get(s.base+"/v2/"+s.repo+"/"+kind+"/"+d.Digest.String(), manifestAccept)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, d.Size+1))
	if err != nil {
		return nil, err
	}
	return b, verifyContent(d, b)
}

// open downloads a layer into an unlinked temporary file: nothing is left behind, whatever happens.
func (s *registryStore) open(d ocispec.Descriptor) (io.ReaderAt, int64, func(), error) {
	resp, err := s.get(s.base+"/v2/"+s.repo+"/blobs/"+d.Digest.String(), "")
	if err != nil {
		return nil, 0, nil, err
	}
	defer resp.Body.Close()
	f, err := os.CreateTemp("", "estargz-check-*")
	if err != nil {
		return nil, 0, nil, err
	}
	os.Remove(f.Name())
	n, err := io.Copy(f, resp.Body)
	if err != nil {
		f.Close()
		return nil, 0, nil, err
	}
	return f, n, func() { f.Close() }, nil
}
