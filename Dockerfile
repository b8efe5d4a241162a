# Build a static binary, then ship it alone on a distroless base as nonroot.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/portcullis ./cmd/portcullis

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/portcullis /usr/local/bin/portcullis
USER nonroot:nonroot
# PostgreSQL listener, MySQL listener, admin HTTP (metrics, health).
EXPOSE 15432 13306 9090
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--config", "/etc/portcullis/portcullis.yaml"]
