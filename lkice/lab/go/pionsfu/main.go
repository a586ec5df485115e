// Command pionsfu is the media plane of the lab's LiveKit stand-in: pion/webrtc, LiveKit's own
// media stack, configured as LiveKit configures it (one UDP port for every session, passive
// ICE/TCP on one TCP port, the answering side a DTLS server, mDNS off, host candidates only on
// the lab's addresses), forwarding RTP between participants (audio, video, one simulcast layer)
// with NACK, RTCP reports, transport-cc feedback and PLI relayed to the publisher.
//
// Signaling stays in Python (lkice/lab/livekit_server.py, the official protobufs); it drives
// this process over stdin/stdout, one JSON object per line (lkice/lab/sfu_pion.py):
//
//	-> {"seq":N,"op":"new","pc":ID,"role":"publisher"|"subscriber","udp":true,"tcp":true}
//	-> {"seq":N,"op":"offer","pc":ID,"restart":false}       <- {"re":N,"sdp":"..."}
//	-> {"seq":N,"op":"answer","pc":ID,"sdp":"<remote offer>"} <- {"re":N,"sdp":"<answer>"}
//	-> {"seq":N,"op":"remote_answer","pc":ID,"sdp":"..."}  <- {"re":N}
//	-> {"seq":N,"op":"candidate","pc":ID,"candidate":{RTCIceCandidateInit}}
//	-> {"seq":N,"op":"channels","pc":ID}   (the SFU's own _reliable/_lossy channels)
//	-> {"op":"send","pc":ID,"label":L,"data":BASE64}   (no reply; queued until open, bounded)
//	-> {"seq":N,"op":"forward","src":ID,"track":TRACK_ID,"dst":ID,"sid":TR_,"stream":PA_|TR_}
//	-> {"seq":N,"op":"unforward","dst":ID,"sid":TR_}
//	-> {"seq":N,"op":"pairs","pc":ID}        <- {"re":N,"pairs":[{"local":..,"remote":..}]}
//	-> {"seq":N,"op":"stats"}                <- {"re":N,"stats":{...}}
//	-> {"seq":N,"op":"close","pc":ID}
//	<- {"ev":"ready","udp":[PORT...],"tcp":[PORT...]}
//	<- {"ev":"candidate","pc":ID,"candidate":{RTCIceCandidateInit}}
//	<- {"ev":"state","pc":ID,"state":"connected"}
//	<- {"ev":"data","pc":ID,"label":L,"data":BASE64}
//	<- {"ev":"track","pc":ID,"track":ID,"stream":ID,"kind":"audio","rid":"q","mime":"video/VP8"}
//
// A reply carries "error" instead when a request fails. End of stdin stops the process.
//
// Built offline in GOPATH mode against Debian's golang-github-pion-webrtc.v3-dev (lkice/lab/pion.py).
package main

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/ice/v2"
	"github.com/pion/interceptor"
	"github.com/pion/logging"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v3"
)

const (
	reliableLabel = "_reliable"
	lossyLabel    = "_lossy"
	// What the SFU keeps for a channel that is not open yet; bounded so a participant whose
	// subscriber never connects cannot grow the lab's memory.
	pendingLimit = 256
	maxLine      = 4 << 20
)

type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(value string) error {
	*l = append(*l, value)
	return nil
}

type request struct {
	Seq       int64              `json:"seq"`
	Op        string             `json:"op"`
	PC        string             `json:"pc"`
	Role      string             `json:"role"`
	UDP       *bool              `json:"udp"`
	TCP       *bool              `json:"tcp"`
	SDP       string             `json:"sdp"`
	Restart   bool               `json:"restart"`
	Candidate *candidateInitJSON `json:"candidate"`
	Label     string             `json:"label"`
	Data      string             `json:"data"`
	Src       string             `json:"src"`
	Track     string             `json:"track"`
	Dst       string             `json:"dst"`
	Sid       string             `json:"sid"`
	Stream    string             `json:"stream"`
	Single    bool               `json:"single"`
}

// candidateInitJSON is an RTCIceCandidateInit with the field names browsers and LiveKit use.
type candidateInitJSON struct {
	Candidate        string  `json:"candidate"`
	SDPMid           *string `json:"sdpMid"`
	SDPMLineIndex    *uint16 `json:"sdpMLineIndex"`
	UsernameFragment *string `json:"usernameFragment"`
}

// out serialises every line written to stdout.
type out struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func (o *out) write(v map[string]any) {
	line, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "pionsfu: cannot encode %v: %v\n", v, err)
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	_, _ = o.w.Write(line)
	_ = o.w.WriteByte('\n')
	_ = o.w.Flush()
}

// forward is one published track (one layer of it) sent on to other participants.
type forward struct {
	local   *webrtc.TrackLocalStaticRTP
	senders map[string]*webrtc.RTPSender // subscriber PC id -> its sender
}

// published is a track a participant sends: its layers (simulcast RIDs; "" without) and the
// forwarders (one per track SID given by signaling).
type published struct {
	kind     webrtc.RTPCodecType
	codec    webrtc.RTPCodecCapability
	layers   map[string]*webrtc.TrackRemote
	chosen   string // the layer forwarded
	forwards map[string]*forward
}

type peer struct {
	id     string
	role   string
	pc     *webrtc.PeerConnection
	server *server

	mu       sync.Mutex
	channels map[string]*webrtc.DataChannel
	pending  map[string][][]byte
	// Candidates found before the description that announces them was written out are held,
	// so signaling never trickles a candidate ahead of its SDP.
	held        []webrtc.ICECandidateInit
	holding     bool
	tracks      map[string]*published // remote track id -> what it publishes
	subscribing map[string]*webrtc.RTPSender
	// A /rtc/v1 session's one PeerConnection: the client offers every time, so forwarded
	// tracks wait here for its next offer and ride the recvonly sections it brings.
	single   bool
	api      *webrtc.API
	awaiting []*attachment
}

// attachment is a forwarded track waiting for a /rtc/v1 client's next offer.
type attachment struct {
	local *webrtc.TrackLocalStaticRTP
	done  func(*webrtc.RTPSender)
}

type server struct {
	out       *out
	udpMux    ice.UDPMux
	tcpMux    ice.TCPMux
	addresses map[string]bool
	log       logging.LoggerFactory

	mu    sync.Mutex
	peers map[string]*peer

	rtpIn, rtpOut, pliOut, dataIn, tcpAccepted atomic.Int64
}

// countingListener counts the ICE/TCP connections accepted (lab ground truth: a check that
// reached the SFU's TCP port).
type countingListener struct {
	net.Listener
	count *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err == nil {
		l.count.Add(1)
	}
	return conn, err
}

func main() {
	var udpAddrs, tcpAddrs listFlag
	flag.Var(&udpAddrs, "udp", "UDP mux address ip:port (repeatable); the only host candidates offered")
	flag.Var(&tcpAddrs, "tcp", "passive ICE/TCP address ip:port (repeatable)")
	logLevel := flag.String("log", "warn", "pion log level (error, warn, info, debug, trace)")
	flag.Parse()
	if len(udpAddrs) == 0 && len(tcpAddrs) == 0 {
		fmt.Fprintln(os.Stderr, "pionsfu: give at least one -udp or -tcp address")
		os.Exit(2)
	}
	if err := run(udpAddrs, tcpAddrs, *logLevel); err != nil {
		fmt.Fprintf(os.Stderr, "pionsfu: %v\n", err)
		os.Exit(1)
	}
}

func run(udpAddrs, tcpAddrs []string, logLevel string) error {
	factory := logging.NewDefaultLoggerFactory()
	factory.DefaultLogLevel = parseLevel(logLevel)
	factory.Writer = os.Stderr // stdout carries the protocol (pion's default writer is stdout)
	s := &server{
		out:       &out{w: bufio.NewWriter(os.Stdout)},
		addresses: map[string]bool{},
		log:       factory,
		peers:     map[string]*peer{},
	}
	var udpPorts, tcpPorts []int
	var udpMuxes []ice.UDPMux
	for _, a := range udpAddrs {
		addr, err := net.ResolveUDPAddr("udp", a)
		if err != nil {
			return fmt.Errorf("-udp %s: %w", a, err)
		}
		conn, err := net.ListenUDP("udp", addr)
		if err != nil {
			return fmt.Errorf("-udp %s: %w", a, err)
		}
		s.addresses[addr.IP.String()] = true
		udpPorts = append(udpPorts, conn.LocalAddr().(*net.UDPAddr).Port)
		udpMuxes = append(udpMuxes, webrtc.NewICEUDPMux(factory.NewLogger("udpmux"), conn))
	}
	switch len(udpMuxes) {
	case 0:
	case 1:
		s.udpMux = udpMuxes[0]
	default:
		s.udpMux = ice.NewMultiUDPMuxDefault(udpMuxes...)
	}
	var tcpMuxes []ice.TCPMux
	for _, a := range tcpAddrs {
		addr, err := net.ResolveTCPAddr("tcp", a)
		if err != nil {
			return fmt.Errorf("-tcp %s: %w", a, err)
		}
		listener, err := net.ListenTCP("tcp", addr)
		if err != nil {
			return fmt.Errorf("-tcp %s: %w", a, err)
		}
		s.addresses[addr.IP.String()] = true
		tcpPorts = append(tcpPorts, listener.Addr().(*net.TCPAddr).Port)
		counted := countingListener{Listener: listener, count: &s.tcpAccepted}
		tcpMuxes = append(tcpMuxes, webrtc.NewICETCPMux(factory.NewLogger("tcpmux"), counted, 32))
	}
	switch len(tcpMuxes) {
	case 0:
	case 1:
		s.tcpMux = tcpMuxes[0]
	default:
		s.tcpMux = ice.NewMultiTCPMuxDefault(tcpMuxes...)
	}
	s.out.write(map[string]any{"ev": "ready", "udp": udpPorts, "tcp": tcpPorts})

	reader := bufio.NewReaderSize(os.Stdin, 64<<10)
	for {
		line, err := readLine(reader)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "pionsfu: %v\n", err)
			continue
		}
		var req request
		if err := json.Unmarshal(line, &req); err != nil {
			fmt.Fprintf(os.Stderr, "pionsfu: undecodable request: %v\n", err)
			continue
		}
		s.handle(&req)
	}
	s.mu.Lock()
	peers := make([]*peer, 0, len(s.peers))
	for _, p := range s.peers {
		peers = append(peers, p)
	}
	s.mu.Unlock()
	for _, p := range peers {
		_ = p.pc.Close()
	}
	return nil
}

// readLine reads one line of at most maxLine bytes; a longer one is skipped with an error.
func readLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, isPrefix, err := r.ReadLine()
		if err != nil {
			return nil, err
		}
		if len(line)+len(chunk) > maxLine {
			for isPrefix {
				if _, isPrefix, err = r.ReadLine(); err != nil {
					return nil, err
				}
			}
			return nil, fmt.Errorf("request over %d bytes skipped", maxLine)
		}
		line = append(line, chunk...)
		if !isPrefix {
			return line, nil
		}
	}
}

func parseLevel(name string) logging.LogLevel {
	switch name {
	case "error":
		return logging.LogLevelError
	case "info":
		return logging.LogLevelInfo
	case "debug":
		return logging.LogLevelDebug
	case "trace":
		return logging.LogLevelTrace
	}
	return logging.LogLevelWarn
}

func (s *server) reply(req *request, fields map[string]any, err error) {
	if req.Seq == 0 {
		if err != nil {
			fmt.Fprintf(os.Stderr, "pionsfu: %s %s: %v\n", req.Op, req.PC, err)
		}
		return
	}
	v := map[string]any{"re": req.Seq}
	for k, f := range fields {
		v[k] = f
	}
	if err != nil {
		v["error"] = err.Error()
	}
	s.out.write(v)
}

func (s *server) peer(id string) (*peer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.peers[id]
	if !ok {
		return nil, fmt.Errorf("no peer connection %q", id)
	}
	return p, nil
}

func (s *server) handle(req *request) {
	var fields map[string]any
	var err error
	switch req.Op {
	case "new":
		err = s.newPeer(req)
	case "offer", "answer", "remote_answer", "candidate", "channels", "pairs", "close":
		var p *peer
		if p, err = s.peer(req.PC); err == nil {
			fields, err = p.handle(req)
			if req.Op == "offer" || req.Op == "answer" {
				// The description first, then its candidates: signaling never trickles a
				// candidate ahead of the SDP it belongs to.
				s.reply(req, fields, err)
				p.release()
				return
			}
		}
	case "send":
		var p *peer
		if p, err = s.peer(req.PC); err == nil {
			err = p.send(req.Label, req.Data)
		}
	case "forward":
		if err = s.forward(req); errors.Is(err, errPending) {
			err, fields = nil, map[string]any{"pending": true}
		}
	case "unforward":
		err = s.unforward(req)
	case "stats":
		fields = map[string]any{"stats": map[string]any{
			"rtp_in": s.rtpIn.Load(), "rtp_out": s.rtpOut.Load(),
			"pli_out": s.pliOut.Load(), "data_in": s.dataIn.Load(),
			"tcp_accepted": s.tcpAccepted.Load(),
		}}
	default:
		err = fmt.Errorf("unknown op %q", req.Op)
	}
	s.reply(req, fields, err)
}

func (s *server) api(udp, tcp bool) (*webrtc.API, error) {
	media := &webrtc.MediaEngine{}
	if err := media.RegisterDefaultCodecs(); err != nil {
		return nil, err
	}
	// What LiveKit's SFU negotiates besides the codecs: mid and the simulcast stream ids (a
	// client's simulcast offer is refused without them), audio level, and transport-cc.
	for _, uri := range []string{sdp.SDESMidURI, sdp.SDESRTPStreamIDURI, "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"} {
		if err := media.RegisterHeaderExtension(webrtc.RTPHeaderExtensionCapability{URI: uri}, webrtc.RTPCodecTypeVideo); err != nil {
			return nil, err
		}
	}
	for _, uri := range []string{sdp.SDESMidURI, sdp.AudioLevelURI} {
		if err := media.RegisterHeaderExtension(webrtc.RTPHeaderExtensionCapability{URI: uri}, webrtc.RTPCodecTypeAudio); err != nil {
			return nil, err
		}
	}
	registry := &interceptor.Registry{}
	// NACK generator and responder, RTCP sender/receiver reports, transport-cc feedback: without
	// the feedback a browser's bandwidth estimate never leaves its floor.
	if err := webrtc.RegisterDefaultInterceptors(media, registry); err != nil {
		return nil, err
	}
	settings := webrtc.SettingEngine{LoggerFactory: s.log}
	// LiveKit's settings (pkg/rtc/transport config): the answering side is the DTLS server, so a
	// renegotiation never flips DTLS roles; full ICE; no mDNS; candidates on the muxes only.
	if err := settings.SetAnsweringDTLSRole(webrtc.DTLSRoleServer); err != nil {
		return nil, err
	}
	settings.SetLite(false)
	settings.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	settings.SetICETimeouts(10*time.Second, 15*time.Second, 2*time.Second)
	settings.SetIncludeLoopbackCandidate(true)
	settings.SetIPFilter(func(ip net.IP) bool { return s.addresses[ip.String()] })
	var networks []webrtc.NetworkType
	if udp && s.udpMux != nil {
		settings.SetICEUDPMux(s.udpMux)
		networks = append(networks, webrtc.NetworkTypeUDP4, webrtc.NetworkTypeUDP6)
	}
	if tcp && s.tcpMux != nil {
		settings.SetICETCPMux(s.tcpMux)
		networks = append(networks, webrtc.NetworkTypeTCP4, webrtc.NetworkTypeTCP6)
	}
	if len(networks) == 0 {
		return nil, errors.New("no transport left for this peer connection")
	}
	settings.SetNetworkTypes(networks)
	return webrtc.NewAPI(webrtc.WithMediaEngine(media), webrtc.WithInterceptorRegistry(registry), webrtc.WithSettingEngine(settings)), nil
}

func (s *server) newPeer(req *request) error {
	if req.PC == "" {
		return errors.New("empty peer connection id")
	}
	s.mu.Lock()
	_, exists := s.peers[req.PC]
	s.mu.Unlock()
	if exists {
		return fmt.Errorf("peer connection %q exists", req.PC)
	}
	udp := req.UDP == nil || *req.UDP
	tcp := req.TCP == nil || *req.TCP
	api, err := s.api(udp, tcp)
	if err != nil {
		return err
	}
	pc, err := api.NewPeerConnection(webrtc.Configuration{
		BundlePolicy:  webrtc.BundlePolicyMaxBundle,
		RTCPMuxPolicy: webrtc.RTCPMuxPolicyRequire,
	})
	if err != nil {
		return err
	}
	p := &peer{
		id: req.PC, role: req.Role, pc: pc, server: s, single: req.Single, api: api,
		channels: map[string]*webrtc.DataChannel{}, pending: map[string][][]byte{},
		tracks: map[string]*published{}, subscribing: map[string]*webrtc.RTPSender{},
	}
	pc.OnICECandidate(p.candidate)
	pc.OnConnectionStateChange(func(state webrtc.PeerConnectionState) {
		s.out.write(map[string]any{"ev": "state", "pc": p.id, "state": state.String()})
	})
	pc.OnDataChannel(p.remoteChannel)
	pc.OnTrack(p.track)
	s.mu.Lock()
	s.peers[req.PC] = p
	s.mu.Unlock()
	return nil
}

func (p *peer) handle(req *request) (map[string]any, error) {
	switch req.Op {
	case "offer":
		return p.offer(req.Restart)
	case "answer":
		return p.answer(req.SDP)
	case "remote_answer":
		return nil, p.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: req.SDP})
	case "candidate":
		if req.Candidate == nil {
			return nil, errors.New("no candidate")
		}
		init := webrtc.ICECandidateInit{
			Candidate:        req.Candidate.Candidate,
			SDPMid:           req.Candidate.SDPMid,
			SDPMLineIndex:    req.Candidate.SDPMLineIndex,
			UsernameFragment: req.Candidate.UsernameFragment,
		}
		return nil, p.pc.AddICECandidate(init)
	case "channels":
		return nil, p.openChannels()
	case "pairs":
		return map[string]any{"pairs": p.pairs()}, nil
	case "close":
		p.server.mu.Lock()
		delete(p.server.peers, p.id)
		p.server.mu.Unlock()
		p.server.dropSubscriber(p.id)
		return nil, p.pc.Close()
	}
	return nil, fmt.Errorf("unknown op %q", req.Op)
}

func (p *peer) hold() {
	p.mu.Lock()
	p.holding = true
	p.mu.Unlock()
}

// release lets the held candidates out, after the description they belong to.
func (p *peer) release() {
	p.mu.Lock()
	held := p.held
	p.held = nil
	p.holding = false
	p.mu.Unlock()
	for _, c := range held {
		p.emitCandidate(c)
	}
}

func (p *peer) candidate(c *webrtc.ICECandidate) {
	if c == nil {
		return // end of gathering: LiveKit sends no end-of-candidates trickle
	}
	init := c.ToJSON()
	p.mu.Lock()
	if p.holding {
		p.held = append(p.held, init)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	p.emitCandidate(init)
}

func (p *peer) emitCandidate(c webrtc.ICECandidateInit) {
	p.server.out.write(map[string]any{"ev": "candidate", "pc": p.id, "candidate": map[string]any{
		"candidate": c.Candidate, "sdpMid": c.SDPMid, "sdpMLineIndex": c.SDPMLineIndex, "usernameFragment": nil,
	}})
}

func (p *peer) offer(restart bool) (map[string]any, error) {
	p.hold() // released once the reply is out
	var options *webrtc.OfferOptions
	if restart {
		options = &webrtc.OfferOptions{ICERestart: true}
	}
	offer, err := p.pc.CreateOffer(options)
	if err != nil {
		return nil, err
	}
	if err := p.pc.SetLocalDescription(offer); err != nil {
		return nil, err
	}
	return map[string]any{"sdp": offer.SDP, "mids": p.mids()}, nil
}

// mids maps each media section that carries a forwarded track to the track's SID, which
// LiveKit sends beside the description (SessionDescription.mid_to_track_id).
func (p *peer) mids() map[string]string {
	mids := map[string]string{}
	for _, t := range p.pc.GetTransceivers() {
		if sender := t.Sender(); sender != nil && sender.Track() != nil && t.Mid() != "" {
			mids[t.Mid()] = sender.Track().ID()
		}
	}
	return mids
}

// attachAwaiting puts the forwarded tracks waiting for this offer on the recvonly sections it
// brought (pion's own transceivers for them: direction sendonly, no sender yet).
func (p *peer) attachAwaiting() {
	p.mu.Lock()
	awaiting := p.awaiting
	p.awaiting = nil
	p.mu.Unlock()
	var left []*attachment
	for _, a := range awaiting {
		attached := false
		for _, t := range p.pc.GetTransceivers() {
			if t.Kind() != a.local.Kind() || t.Sender() != nil || t.Direction() != webrtc.RTPTransceiverDirectionSendonly {
				continue
			}
			sender, err := p.api.NewRTPSender(a.local, p.pc.SCTP().Transport())
			if err != nil {
				break
			}
			if err := t.SetSender(sender, a.local); err != nil {
				_ = sender.Stop()
				continue
			}
			a.done(sender)
			attached = true
			break
		}
		if !attached {
			left = append(left, a)
		}
	}
	p.mu.Lock()
	p.awaiting = append(left, p.awaiting...)
	p.mu.Unlock()
}

func (p *peer) answer(remote string) (map[string]any, error) {
	p.hold() // released once the reply is out
	if err := p.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: remote}); err != nil {
		return nil, err
	}
	p.attachAwaiting()
	answer, err := p.pc.CreateAnswer(nil)
	if err != nil {
		return nil, err
	}
	if err := p.pc.SetLocalDescription(answer); err != nil {
		return nil, err
	}
	p.mu.Lock()
	waiting := len(p.awaiting)
	p.mu.Unlock()
	return map[string]any{"sdp": answer.SDP, "mids": p.mids(), "awaiting": waiting}, nil
}

// openChannels creates the SFU's own channels: _reliable (ordered) and _lossy (unordered, no
// retransmits), on which other participants' data is forwarded.
func (p *peer) openChannels() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.channels) > 0 {
		return nil
	}
	ordered, unordered := true, false
	var zero uint16
	for _, spec := range []struct {
		label string
		init  *webrtc.DataChannelInit
	}{
		{reliableLabel, &webrtc.DataChannelInit{Ordered: &ordered}},
		{lossyLabel, &webrtc.DataChannelInit{Ordered: &unordered, MaxRetransmits: &zero}},
	} {
		channel, err := p.pc.CreateDataChannel(spec.label, spec.init)
		if err != nil {
			return err
		}
		label := spec.label
		p.channels[label] = channel
		channel.OnOpen(func() {
			p.mu.Lock()
			queued := p.pending[label]
			delete(p.pending, label)
			p.mu.Unlock()
			for _, payload := range queued {
				_ = channel.Send(payload)
			}
		})
	}
	return nil
}

func (p *peer) send(label, data string) error {
	payload, err := base64.StdEncoding.DecodeString(data)
	if err != nil {
		return err
	}
	p.mu.Lock()
	channel := p.channels[label]
	if channel == nil {
		p.mu.Unlock()
		return fmt.Errorf("no channel %q", label)
	}
	if channel.ReadyState() != webrtc.DataChannelStateOpen {
		if len(p.pending[label]) < pendingLimit {
			p.pending[label] = append(p.pending[label], payload)
		}
		p.mu.Unlock()
		return nil
	}
	p.mu.Unlock()
	return channel.Send(payload)
}

func (p *peer) remoteChannel(channel *webrtc.DataChannel) {
	label := channel.Label()
	channel.OnMessage(func(message webrtc.DataChannelMessage) {
		if message.IsString {
			return // LiveKit's channels carry protobuf DataPackets, always binary
		}
		p.server.dataIn.Add(1)
		p.server.out.write(map[string]any{
			"ev": "data", "pc": p.id, "label": label,
			"data": base64.StdEncoding.EncodeToString(message.Data),
		})
	})
}

type pairJSON struct {
	LocalProtocol  string `json:"local_protocol"`
	LocalType      string `json:"local_type"`
	LocalAddress   string `json:"local_address"`
	RemoteProtocol string `json:"remote_protocol"`
	RemoteType     string `json:"remote_type"`
	RemoteAddress  string `json:"remote_address"`
}

func (p *peer) pairs() []pairJSON {
	transport := p.pc.SCTP().Transport().ICETransport()
	pair, err := transport.GetSelectedCandidatePair()
	if err != nil || pair == nil {
		return []pairJSON{}
	}
	return []pairJSON{{
		LocalProtocol:  pair.Local.Protocol.String(),
		LocalType:      pair.Local.Typ.String(),
		LocalAddress:   net.JoinHostPort(pair.Local.Address, fmt.Sprint(pair.Local.Port)),
		RemoteProtocol: pair.Remote.Protocol.String(),
		RemoteType:     pair.Remote.Typ.String(),
		RemoteAddress:  net.JoinHostPort(pair.Remote.Address, fmt.Sprint(pair.Remote.Port)),
	}}
}

// track: a participant publishes a track (or one simulcast layer of it).
func (p *peer) track(remote *webrtc.TrackRemote, receiver *webrtc.RTPReceiver) {
	id := remote.ID()
	p.mu.Lock()
	pub := p.tracks[id]
	if pub == nil {
		pub = &published{
			kind: remote.Kind(), codec: remote.Codec().RTPCodecCapability,
			layers: map[string]*webrtc.TrackRemote{}, forwards: map[string]*forward{},
		}
		p.tracks[id] = pub
	}
	pub.layers[remote.RID()] = remote
	// One layer is forwarded: the lowest simulcast layer ("q", always sent), else the first.
	if pub.chosen == "" || remote.RID() == "q" {
		pub.chosen = remote.RID()
	}
	p.mu.Unlock()
	p.server.out.write(map[string]any{
		"ev": "track", "pc": p.id, "track": id, "stream": remote.StreamID(),
		"kind": remote.Kind().String(), "rid": remote.RID(), "mime": remote.Codec().MimeType,
	})
	go func() {
		// RTCP from the publisher is consumed by the interceptors; read it so they run.
		buf := make([]byte, 1500)
		for {
			if _, _, err := receiver.ReadSimulcast(buf, remote.RID()); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 1500)
	packet := &rtp.Packet{}
	for {
		n, _, err := remote.Read(buf)
		if err != nil {
			return
		}
		p.server.rtpIn.Add(1)
		p.mu.Lock()
		chosen := pub.chosen == remote.RID()
		var locals []*webrtc.TrackLocalStaticRTP
		if chosen {
			for _, f := range pub.forwards {
				locals = append(locals, f.local)
			}
		}
		p.mu.Unlock()
		if len(locals) == 0 {
			continue
		}
		if err := packet.Unmarshal(buf[:n]); err != nil || len(packet.Payload) == 0 {
			continue // padding-only packets are the publisher's bandwidth probes, not media
		}
		// The publisher's extension ids (mid, rid, transport-cc) mean nothing to a subscriber.
		packet.Header.Extension = false
		packet.Header.Extensions = nil
		for _, local := range locals {
			if err := local.WriteRTP(packet); err == nil {
				p.server.rtpOut.Add(1)
			}
		}
	}
}

// forward sends the source's track on to the destination under the SID signaling chose; the
// destination then needs a new offer (signaling sends it).
func (s *server) forward(req *request) error {
	src, err := s.peer(req.Src)
	if err != nil {
		return err
	}
	dst, err := s.peer(req.Dst)
	if err != nil {
		return err
	}
	src.mu.Lock()
	pub := src.tracks[req.Track]
	if pub == nil {
		src.mu.Unlock()
		return fmt.Errorf("no track %q on %q", req.Track, req.Src)
	}
	f := pub.forwards[req.Sid]
	if f == nil {
		local, err := webrtc.NewTrackLocalStaticRTP(pub.codec, req.Sid, req.Stream)
		if err != nil {
			src.mu.Unlock()
			return err
		}
		f = &forward{local: local, senders: map[string]*webrtc.RTPSender{}}
		pub.forwards[req.Sid] = f
	}
	if _, ok := f.senders[dst.id]; ok {
		src.mu.Unlock()
		return nil
	}
	local := f.local
	src.mu.Unlock()
	attached := func(sender *webrtc.RTPSender) {
		src.mu.Lock()
		f.senders[dst.id] = sender
		src.mu.Unlock()
		dst.mu.Lock()
		dst.subscribing[req.Sid] = sender
		dst.mu.Unlock()
		go s.relayFeedback(sender, src, req.Track)
	}
	if dst.single {
		dst.mu.Lock()
		dst.awaiting = append(dst.awaiting, &attachment{local: local, done: attached})
		dst.mu.Unlock()
		return errPending
	}
	sender, err := dst.pc.AddTrack(local)
	if err != nil {
		return err
	}
	attached(sender)
	return nil
}

// errPending: the forward waits for the client's next offer (not an error for the caller).
var errPending = errors.New("pending")

// relayFeedback passes a subscriber's picture loss (PLI, FIR) on to the publisher of the layer
// being forwarded; NACKs are answered from the sender's own buffer (the NACK responder).
func (s *server) relayFeedback(sender *webrtc.RTPSender, src *peer, trackID string) {
	for {
		packets, _, err := sender.ReadRTCP()
		if err != nil {
			return
		}
		for _, packet := range packets {
			switch packet.(type) {
			case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
				src.mu.Lock()
				var ssrc webrtc.SSRC
				if pub := src.tracks[trackID]; pub != nil {
					if layer := pub.layers[pub.chosen]; layer != nil {
						ssrc = layer.SSRC()
					}
				}
				src.mu.Unlock()
				if ssrc != 0 {
					if src.pc.WriteRTCP([]rtcp.Packet{&rtcp.PictureLossIndication{MediaSSRC: uint32(ssrc)}}) == nil {
						s.pliOut.Add(1)
					}
				}
			}
		}
	}
}

func (s *server) unforward(req *request) error {
	dst, err := s.peer(req.Dst)
	if err != nil {
		return err
	}
	dst.mu.Lock()
	sender := dst.subscribing[req.Sid]
	delete(dst.subscribing, req.Sid)
	dst.mu.Unlock()
	if sender == nil {
		return nil
	}
	s.forgetSender(dst.id, req.Sid)
	return dst.pc.RemoveTrack(sender)
}

// forgetSender drops a subscriber from the forwarders of track sid (all publishers).
func (s *server) forgetSender(dstID, sid string) {
	s.mu.Lock()
	peers := make([]*peer, 0, len(s.peers))
	for _, p := range s.peers {
		peers = append(peers, p)
	}
	s.mu.Unlock()
	for _, p := range peers {
		p.mu.Lock()
		for _, pub := range p.tracks {
			for key, f := range pub.forwards {
				if sid != "" && key != sid {
					continue
				}
				delete(f.senders, dstID)
			}
		}
		p.mu.Unlock()
	}
}

// dropSubscriber forgets a closed peer connection as a subscriber of every track.
func (s *server) dropSubscriber(id string) { s.forgetSender(id, "") }
