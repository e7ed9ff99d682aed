// Command stargz-grpc is the lazy-pulling snapshotter of the project's lazy-pull test and benchmark:
// the stargz snapshotter library (github.com/containerd/stargz-snapshotter, fs/ and snapshot/)
// served over containerd's snapshots gRPC API on a unix socket, for containerd to load as a proxy
// plugin:
//
//	[proxy_plugins.stargz]
//	  type = "snapshot"
//	  address = "/path/to/stargz.sock"
//
// Debian packages the library but not upstream's cmd/containerd-stargz-grpc, whose service/ package
// does not build here (service/resolver imports k8s.io/cri-api, which Debian 12 does not package).
// So this program wires the library itself, the way upstream's service does for plain containerd:
// layer sources from the labels `ctr-remote image rpull` sets, the overlay opaque xattr the kernel
// wants, the stargz FUSE filesystem, and the snapshotter on top of it.
//
// Registries: plain HTTP for localhost/127.0.0.1/::1 (the test's docker-registry), HTTPS
// otherwise, anonymous or bearer-token auth. No credential helpers, no CRI labels, no metrics
// endpoint: the tests need none of them.
//
// Usage:
//
//	stargz-grpc --address SOCK --root DIR [--config FILE.toml] [--log-level debug]
//
// The optional TOML file holds the library's fs/config.Config keys at top level
// (prefetch_size, noprefetch, no_background_fetch, [blob], [fuse], ...), like upstream's
// /etc/containerd-stargz-grpc/config.toml.
//
// On SIGTERM or SIGINT it stops serving and unmounts its FUSE filesystems. Snapshot data stays on
// disk (the caller owns --root and deletes it).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/log"
	"github.com/containerd/containerd/reference"
	"github.com/containerd/containerd/remotes/docker"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/overlay/overlayutils"
	stargzfs "github.com/containerd/stargz-snapshotter/fs"
	fsconfig "github.com/containerd/stargz-snapshotter/fs/config"
	"github.com/containerd/stargz-snapshotter/fs/layer"
	"github.com/containerd/stargz-snapshotter/fs/source"
	"github.com/containerd/stargz-snapshotter/metadata"
	"github.com/containerd/stargz-snapshotter/nativeconverter/estargz/externaltoc"
	"github.com/containerd/stargz-snapshotter/snapshot"
	rhttp "github.com/hashicorp/go-retryablehttp"
	"github.com/moby/sys/mountinfo"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
)

// requestTimeout bounds one registry request. The layer reader fetches chunk-sized ranges, so a
// request that takes longer than this is stuck, not slow.
const requestTimeout = 30 * time.Second

func main() {
	address := flag.String("address", "", "unix socket to serve containerd's snapshots API on (required)")
	root := flag.String("root", "", "state directory: snapshots, FUSE mount points, layer caches (required)")
	configPath := flag.String("config", "", "TOML file with fs/config.Config keys (optional)")
	logLevel := flag.String("log-level", "info", "debug, info, warn or error; the prefetch metrics are logged at debug")
	flag.Parse()
	if *address == "" || *root == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	level, err := logrus.ParseLevel(*logLevel)
	if err != nil {
		fmt.Fprintf(os.Stderr, "stargz-grpc: %v\n", err)
		os.Exit(2)
	}
	logrus.SetLevel(level)
	logrus.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: time.RFC3339Nano})
	ctx := log.WithLogger(context.Background(), log.L)

	if err := run(ctx, *address, *root, *configPath); err != nil {
		log.G(ctx).WithError(err).Error("stargz-grpc failed")
		os.Exit(1)
	}
}

func run(ctx context.Context, address, root, configPath string) error {
	var cfg fsconfig.Config
	if configPath != "" {
		meta, err := toml.DecodeFile(configPath, &cfg)
		if err != nil {
			return fmt.Errorf("config %s: %w", configPath, err)
		}
		// A misspelt key would otherwise silently leave its default in place.
		if undecoded := meta.Undecoded(); len(undecoded) > 0 {
			return fmt.Errorf("config %s: unknown keys %v", configPath, undecoded)
		}
	}

	fs, sn, err := newSnapshotter(ctx, root, cfg)
	if err != nil {
		return err
	}

	// Listen last: the socket appearing is what tells the caller the snapshotter is ready (creating
	// the snapshotter re-mounts the remote snapshots a previous run left, which can take a while).
	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		return err
	}
	if err := os.Remove(address); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err // a stale socket would make Listen fail with EADDRINUSE
	}
	listener, err := net.Listen("unix", address)
	if err != nil {
		return err
	}
	server := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(server, snapshotservice.FromSnapshotter(sn))
	served := make(chan error, 1)
	go func() { served <- server.Serve(listener) }()
	log.G(ctx).WithField("address", address).WithField("root", root).
		WithField("no_background_fetch", cfg.NoBackgroundFetch).WithField("noprefetch", cfg.NoPrefetch).
		Info("serving the stargz snapshotter")

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	select {
	case s := <-signals:
		log.G(ctx).Infof("%v: shutting down", s)
		err = nil
	case err = <-served:
		err = fmt.Errorf("gRPC server stopped: %w", err)
	}
	server.Stop()
	// Not snapshotter.Close: it deletes every snapshot directory, including committed ones that
	// containerd's metadata still refers to. Unmounting is what must not be left half done: a FUSE
	// mount whose server has exited answers every access with ENOTCONN.
	unmountFUSE(ctx, fs, filepath.Join(root, "snapshotter", "snapshots"))
	log.G(ctx).Info("stopped")
	return err
}

// newSnapshotter creates the stargz filesystem and the snapshotter using it, as upstream's
// service.NewStargzSnapshotterService does for plain containerd.
func newSnapshotter(ctx context.Context, root string, cfg fsconfig.Config) (snapshot.FileSystem, snapshots.Snapshotter, error) {
	snRoot := filepath.Join(root, "snapshotter")
	if err := os.MkdirAll(snRoot, 0o700); err != nil {
		return nil, nil, err
	}
	// The snapshotter stacks overlayfs on the FUSE layers; fail here, clearly, if it cannot.
	if err := overlayutils.Supported(snRoot); err != nil {
		return nil, nil, fmt.Errorf("overlayfs is not usable under %s: %w", snRoot, err)
	}
	// Opaque directories must be marked with the xattr the kernel's overlayfs reads: trusted.* as
	// root, user.* where overlayfs is mounted with "userxattr" (rootless).
	opaque := layer.OverlayOpaqueTrusted
	userxattr, err := overlayutils.NeedsUserXAttr(snRoot)
	if err != nil {
		log.G(ctx).WithError(err).Warnf("cannot tell whether overlayfs needs userxattr; assuming %v", userxattr)
	}
	if userxattr {
		opaque = layer.OverlayOpaqueUser
	}
	fs, err := stargzfs.NewFilesystem(filepath.Join(root, "stargz"), cfg,
		// The image reference and layer digest come from the labels `ctr-remote image rpull` puts
		// on each snapshot it prepares.
		stargzfs.WithGetSources(source.FromDefaultLabels(registryHosts)),
		// Layers whose TOC is external (--estargz-external-toc): the TOC comes from the image's
		// "-esgztoc" companion in the same registry, as upstream's service wires it.
		stargzfs.WithAdditionalDecompressors(func(ctx context.Context, hosts source.RegistryHosts, refspec reference.Spec, desc ocispec.Descriptor) []metadata.Decompressor {
			return []metadata.Decompressor{externaltoc.NewRemoteDecompressor(ctx, hosts, refspec, desc)}
		}),
		stargzfs.WithOverlayOpaqueType(opaque))
	if err != nil {
		return nil, nil, fmt.Errorf("stargz filesystem: %w", err)
	}
	// AsynchronousRemove: containerd's Remove returns at once and the directories go at the next
	// Cleanup, as upstream configures it.
	sn, err := snapshot.NewSnapshotter(ctx, snRoot, fs, snapshot.AsynchronousRemove)
	if err != nil {
		return nil, nil, fmt.Errorf("snapshotter: %w", err)
	}
	return fs, sn, nil
}

// registryHosts tells the layer reader how to reach the registry of an image reference.
func registryHosts(ref reference.Spec) ([]docker.RegistryHost, error) {
	// A retryablehttp transport, as upstream's: the layer reader sets its retry policy from the
	// [blob] config on exactly this type (and dereferences the transport, so it must not be nil).
	retrying := rhttp.NewClient()
	retrying.Logger = nil // it would log every request at its own [DEBUG] level
	client := retrying.StandardClient()
	client.Timeout = requestTimeout
	host := docker.RegistryHost{
		Client:       client,
		Host:         ref.Hostname(),
		Scheme:       "https",
		Path:         "/v2",
		Capabilities: docker.HostCapabilityPull | docker.HostCapabilityResolve,
		// Anonymous, or the bearer token a registry's 401 challenge points to.
		Authorizer: docker.NewDockerAuthorizer(docker.WithAuthClient(client)),
	}
	if local, _ := docker.MatchLocalhost(host.Host); local {
		host.Scheme = "http"
	}
	if host.Host == "docker.io" {
		host.Host = "registry-1.docker.io"
	}
	return []docker.RegistryHost{host}, nil
}

// unmountFUSE unmounts the snapshotter's FUSE filesystems below dir: through the stargz filesystem,
// which also releases the layer, or directly if it does not know the mount point.
func unmountFUSE(ctx context.Context, fs snapshot.FileSystem, dir string) {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		log.G(ctx).WithError(err).Warn("cannot list mounts")
		return
	}
	for _, m := range mounts {
		if !strings.HasPrefix(m.FSType, "fuse") {
			continue
		}
		if err := fs.Unmount(ctx, m.Mountpoint); err != nil {
			if err := syscall.Unmount(m.Mountpoint, syscall.MNT_DETACH); err != nil {
				log.G(ctx).WithError(err).Warnf("cannot unmount %s", m.Mountpoint)
				continue
			}
		}
		log.G(ctx).Debugf("unmounted %s", m.Mountpoint)
	}
}
