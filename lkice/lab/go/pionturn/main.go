// Command pionturn is the lab's pion/turn server: the TURN library LiveKit's built-in TURN
// server is made of, with UDP, TCP and TLS listeners, static long-term users and TURN REST
// credentials in pion's form or coturn's. It prints one "ready ..." line on stdout once every
// listener is open; pion's own log goes to stderr. SIGTERM or SIGINT stops it.
//
// Built offline in GOPATH mode against Debian's golang-github-pion-turn.v2-dev (lkice/lab/pion.py).
package main

import (
	"crypto/hmac"
	"crypto/sha1" //nolint:gosec // TURN REST credentials are defined with HMAC-SHA1
	"crypto/tls"
	"encoding/base64"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pion/logging"
	"github.com/pion/turn/v2"
)

// userFlags collects repeated -user name=pass flags.
type userFlags map[string]string

func (u userFlags) String() string { return fmt.Sprintf("%d users", len(u)) }

func (u userFlags) Set(value string) error {
	name, pass, ok := strings.Cut(value, "=")
	if !ok || name == "" {
		return fmt.Errorf("want name=password, got %q", value)
	}
	u[name] = pass
	return nil
}

// listFlag collects a repeated flag's values in order.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(value string) error {
	*l = append(*l, value)
	return nil
}

func main() {
	users := userFlags{}
	var extraIPs listFlag
	listenIP := flag.String("listen-ip", "127.0.0.1", "address every listener binds to")
	relayIP := flag.String("relay-ip", "", "relayed address handed out (default: -listen-ip)")
	port := flag.Int("port", 3478, "UDP and TCP port")
	tlsPort := flag.Int("tls-port", 0, "TLS port (0: no TLS listener)")
	altTLSPort := flag.Int("alt-tls-port", 0, "a second TLS port (0: none)")
	certFile := flag.String("cert", "", "PEM certificate chain for TLS")
	keyFile := flag.String("key", "", "PEM private key for TLS")
	realm := flag.String("realm", "lab.test", "realm sent in the 401 challenge")
	secret := flag.String("auth-secret", "", "shared secret for TURN REST credentials")
	restForm := flag.String("rest-form", "pion",
		"REST username form: pion (bare expiry, turn.NewLongTermAuthHandler) or coturn (expiry:user, use-auth-secret)")
	minPort := flag.Int("min-port", 0, "lowest relay port (0 with -max-port 0: any port)")
	maxPort := flag.Int("max-port", 0, "highest relay port")
	logLevel := flag.String("log-level", "info", "pion log level: error, warn, info, debug, trace")
	closeOnReadError := flag.Bool("close-on-read-error", false,
		"close a TCP/TLS connection once a read on it fails, as pion/turn v4 does (2.1.0 never closes one)")
	flag.Var(users, "user", "static long-term user name=password (repeatable)")
	flag.Var(&extraIPs, "extra-ip", "another address with the same listeners, relaying on itself (repeatable)")
	flag.Parse()

	if err := run(config{
		listenIP: *listenIP, relayIP: *relayIP, extraIPs: extraIPs,
		port: *port, tlsPort: *tlsPort, altTLSPort: *altTLSPort, certFile: *certFile, keyFile: *keyFile,
		realm: *realm, users: users, secret: *secret, restForm: *restForm,
		minPort: *minPort, maxPort: *maxPort, logLevel: *logLevel, closeOnReadError: *closeOnReadError,
	}); err != nil {
		fmt.Fprintln(os.Stderr, "pionturn:", err)
		os.Exit(1)
	}
}

type config struct {
	listenIP, relayIP         string
	extraIPs                  []string
	port, tlsPort, altTLSPort int
	certFile, keyFile         string
	realm, secret, restForm   string
	users                     map[string]string
	minPort, maxPort          int
	logLevel                  string
	closeOnReadError          bool
}

func run(c config) error {
	if c.relayIP == "" {
		c.relayIP = c.listenIP
	}
	level, err := parseLevel(c.logLevel)
	if err != nil {
		return err
	}
	loggers := &logging.DefaultLoggerFactory{
		Writer: os.Stderr, DefaultLogLevel: level, ScopeLevels: map[string]logging.LogLevel{},
	}
	auth, err := authHandler(c, loggers.NewLogger("auth"))
	if err != nil {
		return err
	}
	var tlsConfig *tls.Config
	if c.tlsPort != 0 || c.altTLSPort != 0 {
		cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
		if err != nil {
			return fmt.Errorf("TLS certificate: %w", err)
		}
		tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	}

	config := turn.ServerConfig{Realm: c.realm, AuthHandler: auth, LoggerFactory: loggers}
	var ready []string
	// The primary address relays on -relay-ip; each -extra-ip relays on itself, as a server
	// with one public address per interface does.
	ips := append([][2]string{{c.listenIP, c.relayIP}}, pairs(c.extraIPs)...)
	for _, ip := range ips {
		relay, err := relayGenerator(c, ip[0], ip[1])
		if err != nil {
			return err
		}
		hostPort := func(p int) string { return net.JoinHostPort(ip[0], strconv.Itoa(p)) }
		udp, err := net.ListenPacket("udp4", hostPort(c.port))
		if err != nil {
			return err
		}
		tcp, err := net.Listen("tcp4", hostPort(c.port))
		if err != nil {
			return err
		}
		ready = append(ready, "udp="+udp.LocalAddr().String(), "tcp="+tcp.Addr().String())
		config.PacketConnConfigs = append(config.PacketConnConfigs,
			turn.PacketConnConfig{PacketConn: udp, RelayAddressGenerator: relay()})
		config.ListenerConfigs = append(config.ListenerConfigs,
			turn.ListenerConfig{Listener: c.wrap(tcp), RelayAddressGenerator: relay()})
		for _, port := range []int{c.tlsPort, c.altTLSPort} {
			if port == 0 {
				continue
			}
			// A plain tls.Listen, as LiveKit's built-in TURN uses: pion reads STUN from the
			// decrypted stream and leaves handshake failures to crypto/tls.
			listener, err := tls.Listen("tcp4", hostPort(port), tlsConfig)
			if err != nil {
				return err
			}
			ready = append(ready, "tls="+listener.Addr().String())
			config.ListenerConfigs = append(config.ListenerConfigs,
				turn.ListenerConfig{Listener: c.wrap(listener), RelayAddressGenerator: relay()})
		}
	}

	server, err := turn.NewServer(config)
	if err != nil {
		return err
	}
	// The lab waits for this line; stdout carries nothing else.
	fmt.Println("ready " + strings.Join(ready, " "))

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	return server.Close()
}

func (c config) wrap(l net.Listener) net.Listener {
	if c.closeOnReadError {
		return closingListener{l}
	}
	return l
}

// closingListener hands out connections that close themselves once a read fails. pion/turn
// 2.1.0 stops reading such a connection but never closes it; v4 closes it when its read loop
// ends (it also drops that connection's allocation, which this does not imitate).
type closingListener struct{ net.Listener }

func (l closingListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return closingConn{conn}, nil
}

type closingConn struct{ net.Conn }

func (c closingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil {
		c.Conn.Close()
	}
	return n, err
}

func pairs(ips []string) [][2]string {
	out := make([][2]string, 0, len(ips))
	for _, ip := range ips {
		out = append(out, [2]string{ip, ip})
	}
	return out
}

// relayGenerator makes a fresh generator per listener on each call: pion validates (and
// initialises) every generator it is given.
func relayGenerator(c config, listenIP, relayIP string) (func() turn.RelayAddressGenerator, error) {
	relayAddr := net.ParseIP(relayIP)
	if relayAddr == nil {
		return nil, fmt.Errorf("relay address %q is not an IP address", relayIP)
	}
	if c.minPort == 0 && c.maxPort == 0 {
		return func() turn.RelayAddressGenerator {
			return &turn.RelayAddressGeneratorStatic{RelayAddress: relayAddr, Address: listenIP}
		}, nil
	}
	if c.minPort <= 0 || c.maxPort < c.minPort || c.maxPort > 65535 {
		return nil, fmt.Errorf("relay port range %d-%d is not valid", c.minPort, c.maxPort)
	}
	return func() turn.RelayAddressGenerator {
		return &turn.RelayAddressGeneratorPortRange{
			RelayAddress: relayAddr, Address: listenIP,
			MinPort: uint16(c.minPort), MaxPort: uint16(c.maxPort),
		}
	}, nil
}

// authHandler answers pion's key lookup: static users first, then REST credentials if a
// secret is set. Returning false makes pion answer 400 (its behaviour for any unknown user).
func authHandler(c config, log logging.LeveledLogger) (turn.AuthHandler, error) {
	static := map[string][]byte{}
	for name, pass := range c.users {
		static[name] = turn.GenerateAuthKey(name, c.realm, pass)
	}
	var rest turn.AuthHandler
	switch {
	case c.secret == "":
	case c.restForm == "pion":
		// pion's own handler: the username must be the bare expiry (unix seconds).
		rest = turn.NewLongTermAuthHandler(c.secret, log)
	case c.restForm == "coturn":
		rest = coturnRestHandler(c.secret, log)
	default:
		return nil, fmt.Errorf("-rest-form %q: want pion or coturn", c.restForm)
	}
	return func(username, realm string, src net.Addr) ([]byte, bool) {
		if key, ok := static[username]; ok {
			return key, true
		}
		if rest != nil {
			return rest(username, realm, src)
		}
		log.Infof("unknown user %q from %v", username, src)
		return nil, false
	}, nil
}

// coturnRestHandler checks credentials as coturn's use-auth-secret does: username
// "<expiry>:<user>" (or a bare expiry), password base64(HMAC-SHA1(secret, username)).
func coturnRestHandler(secret string, log logging.LeveledLogger) turn.AuthHandler {
	return func(username, realm string, src net.Addr) ([]byte, bool) {
		stamp, _, _ := strings.Cut(username, ":")
		expiry, err := strconv.ParseInt(stamp, 10, 64)
		if err != nil {
			log.Infof("REST username %q from %v has no expiry timestamp", username, src)
			return nil, false
		}
		if expiry < time.Now().Unix() {
			log.Infof("REST username %q from %v expired", username, src)
			return nil, false
		}
		mac := hmac.New(sha1.New, []byte(secret))
		mac.Write([]byte(username))
		password := base64.StdEncoding.EncodeToString(mac.Sum(nil))
		return turn.GenerateAuthKey(username, realm, password), true
	}
}

func parseLevel(name string) (logging.LogLevel, error) {
	levels := map[string]logging.LogLevel{
		"error": logging.LogLevelError, "warn": logging.LogLevelWarn, "info": logging.LogLevelInfo,
		"debug": logging.LogLevelDebug, "trace": logging.LogLevelTrace,
	}
	level, ok := levels[strings.ToLower(name)]
	if !ok {
		return 0, fmt.Errorf("-log-level %q: want error, warn, info, debug or trace", name)
	}
	return level, nil
}
